"""The law's rows (relay/law): each convocation's meeting date, assembly and urgency.

Functions over the :class:`Store`'s public methods; writes run inside the caller's transaction
(intake's, through ``Spool.accept``), reads through the store's reader.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite

from relay.errors import ConflictError
from relay.law.dates import MeetingDate
from relay.law.deadline import Assembly
from relay.law.meeting import Convocation
from relay.store import Store

_UPSERT = (
    "INSERT INTO convocations (submission_id, meeting_date, meeting_time, meeting_source, assembly, urgent,"
    " installation, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (submission_id) DO UPDATE SET"
    " meeting_date = excluded.meeting_date, meeting_time = excluded.meeting_time,"
    " meeting_source = excluded.meeting_source, assembly = excluded.assembly, urgent = excluded.urgent,"
    " installation = excluded.installation, updated_at = excluded.updated_at"
)
_SELECT = (
    "SELECT c.*, s.received_at, s.message_id, s.subject, s.mail_from FROM convocations c"
    " JOIN submissions s ON s.id = c.submission_id"
)


@dataclass(frozen=True)
class StoredConvocation:
    """One convocation as stored, with its submission's names."""

    submission_id: str
    message_id: str | None
    subject: str | None
    sender: str
    convocation: Convocation

    @classmethod
    def from_row(cls, row: Any) -> StoredConvocation:
        meeting = None
        if row["meeting_date"] is not None:
            time = dt.time.fromisoformat(row["meeting_time"]) if row["meeting_time"] else None
            meeting = MeetingDate(dt.date.fromisoformat(row["meeting_date"]), time, row["meeting_source"])
        return cls(
            submission_id=row["submission_id"],
            message_id=row["message_id"],
            subject=row["subject"],
            sender=row["mail_from"],
            convocation=Convocation(
                meeting=meeting,
                assembly=Assembly(row["assembly"]) if row["assembly"] else None,
                urgent=bool(row["urgent"]),
                installation=bool(row["installation"]),
                received=dt.datetime.fromtimestamp(row["received_at"], dt.UTC),
            ),
        )


async def save_convocation(db: aiosqlite.Connection, submission_id: str, convocation: Convocation, now: float) -> None:
    """Insert or replace one submission's convocation row, inside the caller's transaction."""
    meeting = convocation.meeting
    await db.execute(
        _UPSERT,
        (
            submission_id,
            meeting.date.isoformat() if meeting else None,
            meeting.time.isoformat("minutes") if meeting and meeting.time else None,
            meeting.source if meeting else None,
            convocation.assembly.value if convocation.assembly else None,
            int(convocation.urgent),
            int(convocation.installation),
            now,
        ),
    )


async def convocation(store: Store, submission_id: str) -> StoredConvocation | None:
    row = await store.fetchone(f"{_SELECT} WHERE c.submission_id = ?", (submission_id,))
    return StoredConvocation.from_row(row) if row is not None else None


async def meetings_between(store: Store, first: dt.date, last: dt.date) -> list[StoredConvocation]:
    """Convocations whose meeting falls between ``first`` and ``last`` (included), soonest first."""
    rows = await store.fetchall(
        f"{_SELECT} WHERE c.meeting_date BETWEEN ? AND ? ORDER BY c.meeting_date, c.meeting_time, s.received_at",
        (first.isoformat(), last.isoformat()),
    )
    return [StoredConvocation.from_row(row) for row in rows]


@dataclass(frozen=True)
class Unacknowledged:
    """One member who has not acknowledged a convocation: what a reminder needs."""

    stored: StoredConvocation
    delivery_id: int
    recipient: str
    copy_sha256: str
    sent: int  # reminders already sent to that member


async def unacknowledged(store: Store, first: dt.date, submission_id: str | None = None) -> list[Unacknowledged]:
    """Members whose copy of a convocation meeting on ``first`` or later was delivered and not
    acknowledged (of one submission, or of all)."""
    where = " AND s.id = ?" if submission_id is not None else ""
    rows = await store.fetchall(
        f"SELECT c.*, s.received_at, s.message_id, s.subject, s.mail_from, d.id AS delivery_id, d.recipient,"
        f" d.copy_sha256, (SELECT COUNT(*) FROM reminders r WHERE r.delivery_id = d.id) AS sent"
        f" FROM convocations c JOIN submissions s ON s.id = c.submission_id JOIN deliveries d ON d.submission_id = s.id"
        f" WHERE c.meeting_date >= ? AND d.state = 'delivered' AND d.copy_sha256 IS NOT NULL"
        f" AND NOT EXISTS (SELECT 1 FROM receipts k WHERE k.delivery_id = d.id){where}"
        f" ORDER BY s.received_at, d.id",
        (first.isoformat(), *([submission_id] if submission_id is not None else [])),
    )
    return [
        Unacknowledged(StoredConvocation.from_row(r), r["delivery_id"], r["recipient"], r["copy_sha256"], r["sent"])
        for r in rows
    ]


async def save_reminder(
    db: aiosqlite.Connection, delivery_id: int, submission_id: str, number: int, now: float
) -> None:
    """Link a reminder (its submission) to the member's convocation delivery, inside the caller's transaction."""
    try:
        await db.execute(
            "INSERT INTO reminders (delivery_id, submission_id, number, sent_at) VALUES (?, ?, ?, ?)",
            (delivery_id, submission_id, number, now),
        )
    except sqlite3.IntegrityError as exc:  # queued meanwhile by another (the admin's button, the schedule)
        raise ConflictError(f"reminder {number} of delivery {delivery_id} is already queued") from exc


async def reminders_of(store: Store, submission_id: str) -> dict[str, list[float]]:
    """The times reminders were queued to each member of a convocation, by recipient, oldest first."""
    rows = await store.fetchall(
        "SELECT d.recipient, r.sent_at FROM reminders r JOIN deliveries d ON d.id = r.delivery_id"
        " WHERE d.submission_id = ? ORDER BY r.number",
        (submission_id,),
    )
    out: dict[str, list[float]] = {}
    for row in rows:
        out.setdefault(row["recipient"], []).append(row["sent_at"])
    return out
