"""The tracker's data: acknowledgment tokens and links, page fetches and receipts (with the
raw personal data the privacy purge deletes), written in groups by tracker.recorder."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from relay.errors import StoreError
from relay.evidence.records import Record
from relay.store.engine import AsyncConnection, Database, Executor

PURGE_BATCH = 1000  # personal rows deleted per transaction by the privacy purge
# Rows per INSERT statement of the tracker's writes (_insert_rows), largest first: a few
# statement shapes per table, so they stay in the connection's statement cache.
TRACKER_ROWS_PER_INSERT = (64, 8, 1)


@dataclass(frozen=True)
class PersonalData:
    """Raw personal data kept until the privacy purge, and the salt of its commitments."""

    salt: bytes
    ip: str
    user_agent: str


@dataclass(frozen=True)
class FetchWrite:
    """One fetch of an acknowledgment page, to be recorded (tracker)."""

    delivery_id: int
    at: float
    method: str
    classification: str
    reason: str
    personal: PersonalData
    record: Record


@dataclass(frozen=True)
class ReceiptWrite:
    """One acknowledgment of receipt, to be recorded unless the delivery already has one (tracker)."""

    delivery_id: int
    at: float
    personal: PersonalData
    record: Record


@dataclass(frozen=True)
class AckLink:
    """What an acknowledgment page shows and needs, found by its token's hash.

    ``delivered_at`` is the upstream's acceptance when there is one, else the token's creation;
    ``acknowledged_at`` is None until the delivery's first acknowledgment.
    """

    token_sha256: str
    delivery_id: int
    target_url: str | None
    token_created_at: float
    disclosed_by: str | None  # the disclosure record of the bundle that gave the token out, if one did
    recipient: str
    delivery_digest: str | None
    mail_from: str
    subject: str | None
    received_at: float
    message_id: str | None
    delivered_at: float
    acknowledged_at: float | None


class TrackerStore(Protocol):
    """Tokens, links, fetches and receipts; insert_ack_token runs in the caller's transaction."""

    @staticmethod
    async def insert_ack_token(db: Executor, *, token_sha256: str, delivery_id: int, target_url: str | None,
                               now: float) -> None: ...
    async def find_ack_links(self, token_sha256s: Sequence[str]) -> dict[str, AckLink]: ...
    async def write_tracker_events(self, fetches: Sequence[FetchWrite],
                                   receipts: Sequence[ReceiptWrite]) -> list[tuple[float, bool]]: ...
    async def purge_personal(self, before: float) -> int: ...


def _insert_rows(conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """In the database thread: ``rows`` inserted by ``sql`` (an INSERT with one ``VALUES
    (?, ...)`` row), up to TRACKER_ROWS_PER_INSERT[0] rows a statement.

    Rather than executemany, whose every row is one step of SQLite, and each step gives
    the GIL up and takes it back: while the event loop is busy, taking it back waits up
    to the switch interval (5 ms), then forces the loop to hand it over. A commit of 500
    fetches made 2,500 such steps.
    """
    head, row = sql.split(" VALUES ")
    start = 0
    for size in TRACKER_ROWS_PER_INSERT:
        statement = f"{head} VALUES {', '.join([row] * size)}"
        while len(rows) - start >= size:
            chunk = rows[start:start + size]
            conn.execute(statement, [value for values in chunk for value in values]).close()
            start += size


class SqliteTracker:
    """:class:`TrackerStore` on SQLite."""

    db: Database
    webhook_urls: tuple[str, ...]

    if TYPE_CHECKING:  # webhooks.SqliteWebhooks's

        async def _tracker_webhooks(
            self, db: Executor, fetches: Sequence[FetchWrite], receipts: Sequence[ReceiptWrite]
        ) -> None: ...

    @staticmethod
    async def insert_ack_token(
        db: Executor, *, token_sha256: str, delivery_id: int, target_url: str | None, now: float
    ) -> None:
        """One acknowledgment token (stored hashed), in the caller's transaction with its delivery record."""
        await db.execute(
            "INSERT INTO ack_tokens (token_sha256, delivery_id, target_url, created_at) VALUES (?, ?, ?, ?)",
            (token_sha256, delivery_id, target_url, now),
        )

    async def find_ack_links(self, token_sha256s: Sequence[str]) -> dict[str, AckLink]:
        """What an acknowledgment page shows and needs, for each known token hash.

        It is read at once on the calling thread (see Database.read_now), so it never waits for
        a thread hand-over, and sees only committed transactions; through fetchall only if that fails.
        """
        marks = ", ".join("?" for _ in token_sha256s)
        sql = (
            "SELECT t.token_sha256, t.delivery_id, t.target_url, t.created_at AS token_created_at, t.disclosed_by,"
            " d.recipient, d.record_digest AS delivery_digest,"
            " s.mail_from, s.subject, s.received_at, s.message_id,"
            " COALESCE((SELECT MAX(a.finished_at) FROM attempts a"
            "           WHERE a.delivery_id = d.id AND a.outcome = 'delivered'), t.created_at) AS delivered_at,"
            " r.at AS acknowledged_at"
            " FROM ack_tokens t JOIN deliveries d ON d.id = t.delivery_id"
            " JOIN submissions s ON s.id = d.submission_id"
            " LEFT JOIN receipts r ON r.delivery_id = d.id"
            f" WHERE t.token_sha256 IN ({marks})"
        )
        rows = self.db.read_now(sql, token_sha256s)
        if rows is None:
            rows = await self.db.fetchall(sql, token_sha256s)
        return {row[0]: AckLink(*row) for row in rows}

    async def write_tracker_events(
        self, fetches: Sequence[FetchWrite], receipts: Sequence[ReceiptWrite]
    ) -> list[tuple[float, bool]]:
        """Record fetches and receipts in ONE transaction (group commit); returns, per receipt,
        (time of the delivery's acknowledgment, whether this one recorded it).

        A delivery is acknowledged once: a receipt for an acknowledged delivery (earlier,
        or earlier in this batch) records nothing and returns the first time.
        The rows are written in one trip to the database thread (with the COMMIT, unless
        webhook events are queued too): each trip costs a thread hand-over and a wake-up of
        the event loop, which made up half of a small group's cost.
        """
        async with self.db.write_lock:
            try:
                results, new = await self.db.call(self._write_tracker_rows, fetches, receipts, not self.webhook_urls)
                if self.webhook_urls:
                    await self._tracker_webhooks(AsyncConnection(self.db), fetches, new)
                    await self.db.call(lambda conn: conn.execute("COMMIT"))
            except (sqlite3.Error, asyncio.CancelledError) as exc:
                await self.db.rollback()
                raise StoreError(f"recording tracker events failed: {exc}") from exc
        return results

    @staticmethod
    def _write_tracker_rows(
        conn: sqlite3.Connection, fetches: Sequence[FetchWrite], receipts: Sequence[ReceiptWrite], commit: bool
    ) -> tuple[list[tuple[float, bool]], list[ReceiptWrite]]:
        """In the database thread: BEGIN, the rows of write_tracker_events, COMMIT if ``commit``.

        Returns the per-receipt results and the receipts that were recorded (first ones).
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = sorted({r.delivery_id for r in receipts})
            marks = ", ".join("?" for _ in ids)
            acked: dict[int, float] = dict(
                conn.execute(f"SELECT delivery_id, at FROM receipts WHERE delivery_id IN ({marks})", ids).fetchall()
            )
            # Personal and record ids are assigned here: BEGIN IMMEDIATE makes this the only writer.
            (last_personal,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM personal").fetchone()
            (last_record,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()
            results: list[tuple[float, bool]] = []
            new: list[ReceiptWrite] = []
            for receipt in receipts:
                first = receipt.delivery_id not in acked
                if first:
                    acked[receipt.delivery_id] = receipt.at
                    new.append(receipt)
                results.append((acked[receipt.delivery_id], first))
            events: list[FetchWrite | ReceiptWrite] = [*fetches, *new]
            # events[n] gets personal id first_id + n and record id first_record + n.
            first_id, first_record = last_personal + 1, last_record + 1
            _insert_rows(
                conn, "INSERT INTO personal (id, salt, ip, user_agent, created_at) VALUES (?, ?, ?, ?, ?)",
                [(first_id + n, e.personal.salt, e.personal.ip, e.personal.user_agent, e.at)
                 for n, e in enumerate(events)],
            )
            _insert_rows(
                conn, "INSERT INTO records (id, digest, type, body, delivery_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                # Each event's record is a receipt record (kind 'fetched' or 'acknowledged'):
                # Record.type would parse its JSON again.
                [(first_record + n, e.record.digest, "receipt", e.record.body, e.delivery_id, e.at)
                 for n, e in enumerate(events)],
            )
            _insert_rows(
                conn, "INSERT INTO anchor_leaves (record_id, digest, queued_at) VALUES (?, ?, ?)",
                [(first_record + n, e.record.digest, e.at) for n, e in enumerate(events)],
            )
            _insert_rows(
                conn,
                "INSERT INTO fetches (delivery_id, at, method, classification, reason, personal_id, record_digest)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(f.delivery_id, f.at, f.method, f.classification, f.reason, first_id + n, f.record.digest)
                 for n, f in enumerate(fetches)],
            )
            _insert_rows(
                conn, "INSERT INTO receipts (delivery_id, at, personal_id, record_digest) VALUES (?, ?, ?, ?)",
                [(r.delivery_id, r.at, first_id + len(fetches) + n, r.record.digest) for n, r in enumerate(new)],
            )
            if commit:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results, new

    async def purge_personal(self, before: float) -> int:
        """Delete raw IP addresses and user agents recorded before ``before``; returns how many rows.

        Records keep their salted commitments, so they still verify; fetches and receipts
        lose the link (ON DELETE SET NULL). Deletes in bounded transactions so writers
        are never held up for long.
        """
        total = 0
        while True:
            async with self.db.transaction() as db:
                cursor = await db.execute(
                    "DELETE FROM personal WHERE id IN"
                    " (SELECT id FROM personal WHERE created_at < ? ORDER BY created_at LIMIT ?)",
                    (before, PURGE_BATCH),
                )
                deleted = cursor.rowcount
            total += deleted
            if deleted < PURGE_BATCH:
                break
        if total:
            # The write-ahead log still holds the pages as they were before the delete.
            await self.db.call(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return total

