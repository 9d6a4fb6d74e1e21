"""The law's rows (relay/law): each convocation's meeting date, assembly and urgency.

Functions over the :class:`Store`'s public methods; writes run inside the caller's transaction
(intake's, through ``Spool.accept``), reads through the store's reader.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import aiosqlite

from relay.law.dates import MeetingDate
from relay.law.deadline import Assembly
from relay.law.meeting import Convocation
from relay.store import Store

_UPSERT = (
    "INSERT INTO convocations (submission_id, meeting_date, meeting_time, meeting_source, assembly, urgent, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (submission_id) DO UPDATE SET meeting_date = excluded.meeting_date,"
    " meeting_time = excluded.meeting_time, meeting_source = excluded.meeting_source, assembly = excluded.assembly,"
    " urgent = excluded.urgent, updated_at = excluded.updated_at"
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
