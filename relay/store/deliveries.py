"""The delivery queue: submissions, their deliveries (one per recipient) and the attempts
at each (intake, certify, deliver, `estampille queue`)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

from relay.store.engine import Database, Executor
from relay.store.states import DUE_STATES, RETRYABLE_STATES, DeliveryState, sql_list


async def insert_row(db: Executor, table: str, row: dict[str, Any]) -> None:
    """INSERT one row given as {column: value}; the column names are ours, never input."""
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    await db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))


def _with_state(row: sqlite3.Row, index: int) -> list[Any]:
    """The values of ``row``, its state column (at ``index``) as a DeliveryState."""
    values = list(row)
    values[index] = DeliveryState(values[index])
    return values


@dataclass(frozen=True)
class DueDelivery:
    """One claimed delivery with what its sending needs from its submission."""

    delivery_id: int
    submission_id: str
    recipient: str
    attempts: int
    copy_sha256: str | None
    record_digest: str | None
    kind: str
    mail_from: str
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    data_sha256: str
    received_at: float
    message_id: str | None
    submission_digest: str
    size: int  # octets of the message as received

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> DueDelivery:
        """From the columns of :meth:`SqliteDeliveries.claim_due`, in order (options as JSON)."""
        values = list(row)
        values[8] = tuple(json.loads(values[8]))
        values[9] = tuple(json.loads(values[9]))
        return cls(*values)


@dataclass(frozen=True)
class PendingDelivery:
    """A deferred or failed delivery, as `estampille queue` lists it."""

    id: int
    submission_id: str
    recipient: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_code: int | None
    last_reply: str | None
    mail_from: str
    message_id: str | None


@dataclass(frozen=True)
class DeliveryStatus:
    """One recipient of a submission: its state, last reply, certified copy and records."""

    id: int
    recipient: str
    state: DeliveryState
    attempts: int
    last_code: int | None
    last_reply: str | None
    copy_sha256: str | None
    record_digest: str | None
    handoff_digest: str | None


class DeliveryQueue(Protocol):
    """The queue intake fills and delivery drains; writers (static) run in the caller's transaction."""

    @staticmethod
    async def insert_submission(db: Executor, sub: dict[str, Any], recipients: list[tuple[str, str]]) -> None: ...
    async def requeue_interrupted(self, now: float) -> int: ...
    async def claim_due(self, now: float, limit: int) -> list[DueDelivery]: ...
    @staticmethod
    async def set_delivery_copy(db: Executor, delivery_id: int, copy_sha256: str, record_digest: str,
                                now: float) -> None: ...
    @staticmethod
    async def finish_attempt(db: Executor, attempt: dict[str, Any], *, state: DeliveryState,
                             next_attempt_at: float, handoff_digest: str | None) -> None: ...
    async def pending_deliveries(self) -> list[PendingDelivery]: ...
    async def retry_deliveries(self, ids: list[int] | None, now: float) -> int: ...
    async def delivery_states(self, submission_id: str) -> list[DeliveryStatus]: ...
    @staticmethod
    async def set_generated_message_id(db: Executor, submission_id: str, message_id: str) -> None: ...


class SqliteDeliveries:
    """:class:`DeliveryQueue` on SQLite."""

    db: Database

    @staticmethod
    async def insert_submission(db: Executor, sub: dict[str, Any], recipients: list[tuple[str, str]]) -> None:
        """One submission row and one queued delivery per (recipient, rcpt_options JSON), in the caller's transaction.

        ``sub`` holds the submissions columns; its evidence record must already be inserted.
        """
        await insert_row(db, "submissions", sub)
        await db.executemany(
            "INSERT INTO deliveries (submission_id, recipient, rcpt_options, state, next_attempt_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(sub["id"], rcpt, options, DeliveryState.QUEUED, sub["received_at"], sub["received_at"])
             for rcpt, options in recipients],
        )

    async def requeue_interrupted(self, now: float) -> int:
        """Deliveries left 'sending' by a crash go back to 'queued' (at-least-once delivery)."""
        async with self.db.transaction() as db:
            cursor = await db.execute(
                "UPDATE deliveries SET state = ?, updated_at = ? WHERE state = ?",
                (DeliveryState.QUEUED, now, DeliveryState.SENDING),
            )
            return cursor.rowcount

    async def claim_due(self, now: float, limit: int) -> list[DueDelivery]:
        """Mark up to ``limit`` due deliveries 'sending' and return them with their submission."""

        def claim(conn: sqlite3.Connection) -> list[DueDelivery]:
            rows = conn.execute(
                "SELECT d.id, d.submission_id, d.recipient, d.attempts, d.copy_sha256, d.record_digest, s.kind,"
                " s.mail_from, s.mail_options, d.rcpt_options, s.data_sha256, s.received_at, s.message_id,"
                " s.record_digest AS submission_digest, s.size"
                " FROM deliveries d JOIN submissions s ON s.id = d.submission_id"
                f" WHERE d.state IN ({sql_list(DUE_STATES)}) AND d.next_attempt_at <= ?"
                " ORDER BY d.next_attempt_at, d.id LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE deliveries SET state = ?, updated_at = ? WHERE id = ?",
                [(DeliveryState.SENDING, now, row[0]) for row in rows],
            )
            return [DueDelivery.from_row(row) for row in rows]

        return await self.db.write_fn(claim)

    @staticmethod
    async def set_delivery_copy(
        db: Executor, delivery_id: int, copy_sha256: str, record_digest: str, now: float
    ) -> None:
        await db.execute(
            "UPDATE deliveries SET copy_sha256 = ?, record_digest = ?, updated_at = ? WHERE id = ?",
            (copy_sha256, record_digest, now, delivery_id),
        )

    @staticmethod
    async def finish_attempt(db: Executor, attempt: dict[str, Any], *, state: DeliveryState,
                             next_attempt_at: float, handoff_digest: str | None) -> None:
        """Record one attempt (the attempts columns in ``attempt``) and move its delivery to ``state``."""
        await insert_row(db, "attempts", attempt)
        await db.execute(
            "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, last_code = ?,"
            " last_reply = ?, handoff_digest = COALESCE(?, handoff_digest), updated_at = ? WHERE id = ?",
            (state, next_attempt_at, attempt["code"], attempt["reply"], handoff_digest,
             attempt["finished_at"], attempt["delivery_id"]),
        )

    async def pending_deliveries(self) -> list[PendingDelivery]:
        """Deferred and failed deliveries with their last reply, oldest first (for `estampille queue`)."""
        rows = await self.db.fetchall(
            "SELECT d.id, d.submission_id, d.recipient, d.state, d.attempts, d.next_attempt_at, d.last_code,"
            " d.last_reply, s.mail_from, s.message_id FROM deliveries d JOIN submissions s ON s.id = d.submission_id"
            f" WHERE d.state IN ({sql_list(RETRYABLE_STATES)}) ORDER BY d.id"
        )
        return [PendingDelivery(*_with_state(row, 3)) for row in rows]

    async def retry_deliveries(self, ids: list[int] | None, now: float) -> int:
        """Make deferred or failed deliveries due now: those in ``ids``, or all when ``ids`` is None."""
        sql = (
            "UPDATE deliveries SET state = ?, next_attempt_at = ?, updated_at = ?"
            f" WHERE state IN ({sql_list(RETRYABLE_STATES)})"
        )
        params: list[Any] = [DeliveryState.QUEUED, now, now]
        if ids is not None:
            sql += f" AND id IN ({', '.join('?' for _ in ids)})"
            params.extend(ids)
        async with self.db.transaction() as db:
            return (await db.execute(sql, params)).rowcount

    async def delivery_states(self, submission_id: str) -> list[DeliveryStatus]:
        """Each recipient of a submission with its state and last reply."""
        rows = await self.db.fetchall(
            "SELECT id, recipient, state, attempts, last_code, last_reply, copy_sha256, record_digest, handoff_digest"
            " FROM deliveries WHERE submission_id = ? ORDER BY id",
            (submission_id,),
        )
        return [DeliveryStatus(*_with_state(row, 2)) for row in rows]

    @staticmethod
    async def set_generated_message_id(db: Executor, submission_id: str, message_id: str) -> None:
        """Record the Message-ID certify added to a message that had none (proofs are found by it)."""
        await db.execute(
            "UPDATE submissions SET message_id = ? WHERE id = ? AND message_id IS NULL", (message_id, submission_id)
        )

