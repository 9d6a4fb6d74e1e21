"""The store: one SQLite database (through aiosqlite) and a content-addressed
directory of message bytes. This module owns the schema and its migrations; no
other module imports aiosqlite or writes SQL.

Durability rules:
- message bytes are written to a temporary file, fsync'd, renamed to their
  SHA-256 and the directory fsync'd before any row names them;
- all writes go through one connection, serialised by :meth:`Store.transaction`
  (``BEGIN IMMEDIATE``), so a caller that got back from it has committed;
- an evidence record and its anchoring leaf are inserted in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from relay.errors import ConflictError, DiskFullError, NotFoundError, StoreError
from relay.evidence.records import Record, canonical_json, iso_time
from relay.store.durable import fsync_directory, write_durably
from relay.store.engine import AsyncConnection, Database
from relay.store.schema import MIGRATIONS as MIGRATIONS
from relay.store.schema import SCHEMA_VERSION as SCHEMA_VERSION

T = TypeVar("T")
log = logging.getLogger("estampille.store")

BLOB_DIR = "messages"
# Received messages and certified copies up to this size live in the database (message_bytes),
# written in the transaction of the rows that name them: that commit's one WAL fsync covers
# them, where a file costs its own fsyncs, a new inode and a directory entry. Larger ones are
# files in BLOB_DIR: bounded so the write-ahead log stays small and a copy is bound once.
INLINE_MAX = 256 * 1024
DB_NAME = "estampille.sqlite3"
PURGE_BATCH = 1000  # personal rows deleted per transaction by the privacy purge
# Rows per INSERT statement of the tracker's writes (Store._insert_rows), largest first:
# a few statement shapes per table, so they stay in the connection's statement cache.
TRACKER_ROWS_PER_INSERT = (64, 8, 1)
_INSERT_RECORD_SQL = (
    "INSERT OR IGNORE INTO records (digest, type, body, submission_id, delivery_id, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_REFERENCED_BLOBS_SQL = (
    "SELECT data_sha256 FROM submissions UNION SELECT copy_sha256 FROM deliveries"
    " WHERE copy_sha256 IS NOT NULL EXCEPT SELECT sha256 FROM purged_messages"
    " EXCEPT SELECT sha256 FROM message_bytes"
)
# Parameters (queued_at, digest); a record already stored was queued with it.
_QUEUE_LEAF_SQL = (
    "INSERT OR IGNORE INTO anchor_leaves (record_id, digest, queued_at) SELECT id, digest, ? FROM records WHERE digest = ?"
)


ANCHOR_CHUNK_BYTES = 32 * 1024  # tree nodes per anchor_nodes row: 1024 hashes
ANCHOR_NONCE_BYTES = 16


@dataclass(frozen=True)
class NewAnchorBatch:
    """A batch to store (relay.anchor.worker): the root, the leaves in tree order, the tree, the replies."""

    root: bytes
    created_at: float
    state: str  # 'submitting' or 'pending'
    next_attempt_at: float
    timestamp: bytes | None  # the root's merged calendar replies, serialized
    rowids: list[int]  # the leaves' row ids (their records' ids), in tree order
    nonces: bytes  # ANCHOR_NONCE_BYTES per leaf, in tree order
    levels: tuple[bytes, ...]  # relay.anchor.merkle.Tree.levels
    replies: tuple[tuple[str, bytes], ...]  # (calendar URL, its reply re-serialized)


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
class OperationsFigures:
    """What /metrics reads from the database at each scrape (times are Unix times)."""

    deliveries_by_state: dict[str, int]
    attempts_by_outcome: dict[str, int]
    fetches_by_classification: dict[str, int]
    oldest_deferred_received_at: float | None
    leaves_pending: int
    oldest_leaf_queued_at: float | None
    batches_pending: int
    oldest_batch_created_at: float | None
    receipts: int


_SQL_CHUNK = 500  # digests per IN (...) query, well under SQLite's variable limit
WEBHOOK_EVENTS = ("accepted", "delivered", "deferred", "failed", "fetched", "acknowledged", "anchored", "confirmed")


async def _insert_row(db: Any, table: str, row: dict[str, Any]) -> None:
    """INSERT one row given as {column: value}; the column names are ours, never input."""
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    await db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))


class Store:
    """The database and the message directory under one data directory."""

    def __init__(self, data_dir: Path, db: Database) -> None:
        self.data_dir = data_dir
        self.blob_dir = data_dir / BLOB_DIR
        self.db = db
        # Set by the service from webhooks.urls; enqueue_event queues one row per URL.
        self.webhook_urls: tuple[str, ...] = ()

    # -- lifecycle -------------------------------------------------------

    @classmethod
    async def open(cls, data_dir: Path) -> Store:
        """Open (creating if needed) the store under ``data_dir`` and migrate it."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (data_dir / BLOB_DIR).mkdir(exist_ok=True, mode=0o700)
        return cls(data_dir, await Database.open(data_dir / DB_NAME))

    async def close(self) -> None:
        await self.db.close()

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """One write transaction; committed when the block exits without error."""
        return self.db.transaction()

    async def write(self, work: Callable[[Any], Awaitable[T]], *, reads: bool = False, urgent: bool = True) -> T:
        """Run ``work(db)`` atomically, in the group commit (see :meth:`Database.write`)."""
        return await self.db.write(work, reads=reads, urgent=urgent)

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return await self.db.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """The first row, or None (for queries that select at most a few rows)."""
        return await self.db.fetchone(sql, params)

    # -- message bytes ---------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    async def put_blob(self, data: bytes) -> str:
        """Write ``data`` durably under its SHA-256 and return the hex digest."""
        return await asyncio.to_thread(self._put_blob_sync, data)

    def _put_blob_sync(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        final = self.blob_path(digest)
        if final.exists():
            return digest
        final.parent.mkdir(exist_ok=True, mode=0o700)
        try:
            write_durably(final, data)
        except OSError as exc:
            raise StoreError(f"cannot write message file {final}: {exc.strerror}") from exc
        return digest

    async def get_blob(self, sha256: str) -> bytes:
        """The bytes stored under ``sha256``: held in the database (INLINE_MAX), or a message file."""
        inline = await self.inline_bytes([sha256])
        if sha256 in inline:
            return inline[sha256]
        try:
            return await asyncio.to_thread(self.blob_path(sha256).read_bytes)
        except FileNotFoundError as exc:
            raise NotFoundError(f"message file {sha256} is missing") from exc

    @staticmethod
    async def insert_bytes(db: AsyncConnection, sha256: str, data: bytes) -> None:
        """Store a message or a copy of at most INLINE_MAX octets in the caller's transaction."""
        await db.execute("INSERT OR IGNORE INTO message_bytes (sha256, data) VALUES (?, ?)", (sha256, data))

    async def inline_bytes(self, digests: Sequence[str]) -> dict[str, bytes]:
        """The messages and copies among ``digests`` that the database holds, by digest."""
        found: dict[str, bytes] = {}
        for start in range(0, len(digests), _SQL_CHUNK):
            chunk = digests[start:start + _SQL_CHUNK]
            rows = await self.fetchall(
                f"SELECT sha256, data FROM message_bytes WHERE sha256 IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update((row[0], bytes(row[1])) for row in rows)
        return found

    def check_free_space(self, min_free_bytes: int) -> None:
        """Raise DiskFullError when the data directory's file system is nearly full."""
        free = shutil.disk_usage(self.data_dir).free
        if free < min_free_bytes:
            raise DiskFullError(f"only {free // 2**20} MB free in {self.data_dir}")

    # -- evidence records ------------------------------------------------

    @staticmethod
    async def insert_record(
        db: AsyncConnection,
        record: Record,
        *,
        submission_id: str | None = None,
        delivery_id: int | None = None,
        now: float,
    ) -> None:
        """Store a record and queue its digest for anchoring, inside the caller's transaction."""
        await db.execute(
            _INSERT_RECORD_SQL, (record.digest, record.type, record.body, submission_id, delivery_id, now)
        )
        await db.execute(_QUEUE_LEAF_SQL, (now, record.digest))

    @staticmethod
    async def insert_records(db: AsyncConnection, records: Sequence[Record], *, now: float) -> None:
        """:meth:`insert_record` for many records at once (no submission or delivery link)."""
        await db.executemany(_INSERT_RECORD_SQL, [(r.digest, r.type, r.body, None, None, now) for r in records])
        await db.executemany(_QUEUE_LEAF_SQL, [(now, r.digest) for r in records])

    async def get_record(self, digest: str) -> Record:
        row = await self.fetchone("SELECT body FROM records WHERE digest = ?", (digest,))
        if row is None:
            raise NotFoundError(f"no evidence record with digest {digest}")
        return Record.from_bytes(row["body"])

    # -- backup ------------------------------------------------------------

    async def backup_database(self, dest: Path) -> None:
        """Copy the database to ``dest`` with SQLite's online backup API.

        One step over all pages: the copy is one consistent snapshot, taken under a
        read transaction that (in WAL mode) does not block the writers.
        """

        await self.db.backup(dest)

    async def integrity_check(self) -> list[str]:
        """SQLite's integrity check: an empty list when the database is sound."""
        rows = await self.fetchall("PRAGMA integrity_check")
        problems = [row[0] for row in rows if row[0] != "ok"]
        rows = await self.fetchall("PRAGMA foreign_key_check")
        problems += [f"{row[0]} row {row[1]} names a missing {row[2]}" for row in rows]
        return problems

    @staticmethod
    async def blobs_named_in(db_file: Path) -> set[str]:
        """SHA-256 of every message file the rows of ``db_file`` name and retention has not
        purged. Read-only, on a file no store has open: a backup checks its snapshot with
        it, not the live database, which has moved on since."""

        def read() -> set[str]:
            conn = sqlite3.connect(db_file.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                return {row[0] for row in conn.execute(_REFERENCED_BLOBS_SQL).fetchall()}
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(read)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {db_file}: {exc}") from exc

    # -- operations: retention of message files -----------------------------

    async def purge_messages(self, received_before: float, now: float) -> int:
        """Mark as purged the message files of submissions received before ``received_before``,
        and delete the copies the database holds for them.

        Only submissions whose every delivery is final (delivered or failed): a
        queued message still needs its bytes. A file also named by a submission
        that is kept (identical bytes) is kept. Returns how many copies held in the
        database were deleted; the caller then deletes the files (:meth:`delete_blob`).
        """
        async with self.transaction() as db:
            rows = await (
                await db.execute(
                    """
                    WITH old AS (
                        SELECT s.id FROM submissions s WHERE s.received_at < ? AND NOT EXISTS (
                            SELECT 1 FROM deliveries d
                            WHERE d.submission_id = s.id AND d.state NOT IN ('delivered', 'failed'))
                    ),
                    named AS (
                        SELECT id AS submission_id, data_sha256 AS sha256 FROM submissions
                        UNION ALL
                        SELECT submission_id, copy_sha256 FROM deliveries WHERE copy_sha256 IS NOT NULL
                    )
                    SELECT sha256 FROM named WHERE submission_id IN (SELECT id FROM old)
                    EXCEPT SELECT sha256 FROM named WHERE submission_id NOT IN (SELECT id FROM old)
                    EXCEPT SELECT sha256 FROM purged_messages
                    """,
                    (received_before,),
                )
            ).fetchall()
            digests = [row[0] for row in rows]
            await db.executemany(
                "INSERT INTO purged_messages (sha256, purged_at) VALUES (?, ?)", [(d, now) for d in digests]
            )
            deleted = await db.executemany("DELETE FROM message_bytes WHERE sha256 = ?", [(d,) for d in digests])
        return deleted.rowcount

    async def purged_messages_present(self) -> list[str]:
        """Purged digests whose file is still on disk (a purge interrupted before deleting it)."""
        rows = await self.fetchall("SELECT sha256 FROM purged_messages")
        return [row[0] for row in rows if self.blob_path(row[0]).exists()]

    async def message_purged_at(self, sha256: str) -> float | None:
        """When retention deleted this message file, or None if it was never purged."""
        row = await self.fetchone("SELECT purged_at FROM purged_messages WHERE sha256 = ?", (sha256,))
        return None if row is None else row[0]

    async def delete_blob(self, sha256: str) -> bool:
        """Delete a message file (retention only); False if it was already gone."""

        def unlink() -> bool:
            path = self.blob_path(sha256)
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            fsync_directory(path.parent)
            return True

        try:
            return await asyncio.to_thread(unlink)
        except OSError as exc:
            raise StoreError(f"cannot delete message file {sha256}: {exc.strerror}") from exc

    # -- operations: figures for /metrics -----------------------------------

    async def operations_figures(self) -> OperationsFigures:
        """Counts and oldest times that the metrics endpoint exposes."""
        deferred = await self.fetchone(
            "SELECT MIN(s.received_at) FROM deliveries d JOIN submissions s ON s.id = d.submission_id"
            " WHERE d.state = 'deferred'"
        )
        leaves = await self.fetchone("SELECT COUNT(*), MIN(queued_at) FROM anchor_leaves WHERE batch_id IS NULL")
        batches = await self.fetchone(
            "SELECT COUNT(*), MIN(created_at) FROM anchor_batches WHERE state IN ('submitting', 'pending')"
        )
        receipts = await self.fetchone("SELECT COUNT(*) FROM receipts")
        return OperationsFigures(
            deliveries_by_state=await self._counts("SELECT state, COUNT(*) FROM deliveries GROUP BY state"),
            attempts_by_outcome=await self._counts("SELECT outcome, COUNT(*) FROM attempts GROUP BY outcome"),
            fetches_by_classification=await self._counts(
                "SELECT classification, COUNT(*) FROM fetches GROUP BY classification"
            ),
            oldest_deferred_received_at=deferred[0],
            leaves_pending=leaves[0],
            oldest_leaf_queued_at=leaves[1],
            batches_pending=batches[0],
            oldest_batch_created_at=batches[1],
            receipts=receipts[0],
        )

    async def _counts(self, sql: str) -> dict[str, int]:
        return {row[0]: row[1] for row in await self.fetchall(sql)}

    # -- relay core: submissions, deliveries, attempts (intake, deliver, queue) --

    @staticmethod
    async def insert_submission(db: AsyncConnection, sub: dict[str, Any], recipients: list[tuple[str, str]]) -> None:
        """One submission row and one queued delivery per (recipient, rcpt_options JSON), in the caller's transaction.

        ``sub`` holds the submissions columns; its evidence record must already be inserted.
        """
        await _insert_row(db, "submissions", sub)
        await db.executemany(
            "INSERT INTO deliveries (submission_id, recipient, rcpt_options, state, next_attempt_at, updated_at)"
            " VALUES (?, ?, ?, 'queued', ?, ?)",
            [(sub["id"], rcpt, options, sub["received_at"], sub["received_at"]) for rcpt, options in recipients],
        )

    async def requeue_interrupted(self, now: float) -> int:
        """Deliveries left 'sending' by a crash go back to 'queued' (at-least-once delivery)."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "UPDATE deliveries SET state = 'queued', updated_at = ? WHERE state = 'sending'", (now,)
            )
            return cursor.rowcount

    async def claim_due(self, now: float, limit: int) -> list[sqlite3.Row]:
        """Mark up to ``limit`` due deliveries 'sending' and return them joined with their submission."""

        async def claim(db: AsyncConnection) -> list[sqlite3.Row]:
            rows = list(
                await (
                    await db.execute(
                        "SELECT d.id, d.submission_id, d.recipient, d.rcpt_options, d.attempts, d.copy_sha256,"
                        " d.record_digest, s.kind, s.mail_from, s.mail_options, s.data_sha256, s.received_at,"
                        " s.message_id, s.record_digest AS submission_digest, s.size"
                        " FROM deliveries d JOIN submissions s ON s.id = d.submission_id"
                        " WHERE d.state IN ('queued', 'deferred') AND d.next_attempt_at <= ?"
                        " ORDER BY d.next_attempt_at, d.id LIMIT ?",
                        (now, limit),
                    )
                ).fetchall()
            )
            if rows:
                await db.executemany(
                    "UPDATE deliveries SET state = 'sending', updated_at = ? WHERE id = ?",
                    [(now, row["id"]) for row in rows],
                )
            return rows

        return await self.write(claim, reads=True)

    async def next_due_at(self) -> float | None:
        """When the earliest queued or deferred delivery is due, or None when there is none."""
        row = await self.fetchone(
            "SELECT MIN(next_attempt_at) AS at FROM deliveries WHERE state IN ('queued', 'deferred')"
        )
        return None if row is None else row["at"]

    @staticmethod
    async def set_delivery_copy(
        db: AsyncConnection, delivery_id: int, copy_sha256: str, record_digest: str, now: float
    ) -> None:
        await db.execute(
            "UPDATE deliveries SET copy_sha256 = ?, record_digest = ?, updated_at = ? WHERE id = ?",
            (copy_sha256, record_digest, now, delivery_id),
        )

    @staticmethod
    async def finish_attempt(db: AsyncConnection, attempt: dict[str, Any], *, state: str,
                             next_attempt_at: float, handoff_digest: str | None) -> None:
        """Record one attempt (the attempts columns in ``attempt``) and move its delivery to ``state``."""
        await _insert_row(db, "attempts", attempt)
        await db.execute(
            "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, last_code = ?,"
            " last_reply = ?, handoff_digest = COALESCE(?, handoff_digest), updated_at = ? WHERE id = ?",
            (state, next_attempt_at, attempt["code"], attempt["reply"], handoff_digest,
             attempt["finished_at"], attempt["delivery_id"]),
        )

    async def pending_deliveries(self) -> list[sqlite3.Row]:
        """Deferred and failed deliveries with their last reply, oldest first (for `estampille queue`)."""
        return await self.fetchall(
            "SELECT d.id, d.submission_id, d.recipient, d.state, d.attempts, d.next_attempt_at, d.last_code,"
            " d.last_reply, s.mail_from, s.message_id FROM deliveries d JOIN submissions s ON s.id = d.submission_id"
            " WHERE d.state IN ('deferred', 'failed') ORDER BY d.id"
        )

    async def retry_deliveries(self, ids: list[int] | None, now: float) -> int:
        """Make deferred or failed deliveries due now: those in ``ids``, or all when ``ids`` is None."""
        sql = "UPDATE deliveries SET state = 'queued', next_attempt_at = ?, updated_at = ? WHERE state IN ('deferred', 'failed')"
        params: list[Any] = [now, now]
        if ids is not None:
            sql += f" AND id IN ({', '.join('?' for _ in ids)})"
            params.extend(ids)
        async with self.transaction() as db:
            return (await db.execute(sql, params)).rowcount

    async def delivery_states(self, submission_id: str) -> list[sqlite3.Row]:
        """Each recipient of a submission with its state and last reply."""
        return await self.fetchall(
            "SELECT id, recipient, state, attempts, last_code, last_reply, copy_sha256, record_digest, handoff_digest"
            " FROM deliveries WHERE submission_id = ? ORDER BY id",
            (submission_id,),
        )

    # -- certify: what a certified copy adds to its submission ----------------

    @staticmethod
    async def set_generated_message_id(db: AsyncConnection, submission_id: str, message_id: str) -> None:
        """Record the Message-ID certify added to a message that had none (proofs are found by it)."""
        await db.execute(
            "UPDATE submissions SET message_id = ? WHERE id = ? AND message_id IS NULL", (message_id, submission_id)
        )

    # -- proofs: messages by Message-ID, search, evidence of one message ----

    async def find_submission(self, message_id: str) -> sqlite3.Row | None:
        """The latest submission carrying ``message_id``, given with or without angle brackets."""
        bare = message_id.strip().removeprefix("<").removesuffix(">")
        return await self.fetchone(
            "SELECT * FROM submissions WHERE message_id IN (?, ?) AND kind = 'mail'"
            " ORDER BY received_at DESC LIMIT 1",
            (bare, f"<{bare}>"),
        )

    async def search_submissions(
        self, *, query: str = "", since: float | None = None, until: float | None = None, limit: int, offset: int
    ) -> tuple[list[sqlite3.Row], int]:
        """Submissions matching ``query`` (Message-ID, subject, sender or a recipient), newest first.

        Returns one page of rows, each with its counts (recipients, delivered,
        acknowledged, records, anchored records), and the total number of matches.
        """
        where = ["s.kind = 'mail'"]
        params: list[Any] = []
        if query:
            like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(
                "(s.message_id LIKE ? ESCAPE '\\' OR s.subject LIKE ? ESCAPE '\\' OR s.mail_from LIKE ? ESCAPE '\\'"
                " OR EXISTS (SELECT 1 FROM deliveries q WHERE q.submission_id = s.id AND q.recipient LIKE ? ESCAPE '\\'))"
            )
            params += [like] * 4
        if since is not None:
            where.append("s.received_at >= ?")
            params.append(since)
        if until is not None:
            where.append("s.received_at < ?")
            params.append(until)
        clause = " AND ".join(where)
        (total,) = await self.fetchone(f"SELECT COUNT(*) FROM submissions s WHERE {clause}", params)
        rows = await self.fetchall(
            "SELECT s.id, s.message_id, s.subject, s.mail_from, s.received_at,"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.submission_id = s.id) AS recipients,"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.submission_id = s.id AND d.state = 'delivered') AS delivered,"
            " (SELECT COUNT(*) FROM receipts r JOIN deliveries d ON d.id = r.delivery_id"
            "  WHERE d.submission_id = s.id) AS acknowledged"
            f" FROM submissions s WHERE {clause} ORDER BY s.received_at DESC, s.id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return rows, total

    async def message_digests(self, submission_ids: list[str]) -> list[sqlite3.Row]:
        """Every evidence digest of these submissions: (submission_id, digest, batch_state) rows,
        batch_state being NULL while the record waits for a batch."""
        marks = ", ".join("?" for _ in submission_ids)
        return await self.fetchall(
            "SELECT m.submission_id, m.digest, b.state AS batch_state FROM ("
            f" SELECT id AS submission_id, record_digest AS digest FROM submissions WHERE id IN ({marks})"
            f" UNION ALL SELECT submission_id, record_digest FROM deliveries WHERE submission_id IN ({marks})"
            " UNION ALL SELECT d.submission_id, r.digest FROM records r JOIN deliveries d ON d.id = r.delivery_id"
            f"  WHERE r.type = 'handoff' AND d.submission_id IN ({marks})"
            " UNION ALL SELECT d.submission_id, r.record_digest FROM receipts r JOIN deliveries d"
            f"  ON d.id = r.delivery_id WHERE d.submission_id IN ({marks})"
            " UNION ALL SELECT d.submission_id, f.record_digest FROM fetches f JOIN deliveries d"
            f"  ON d.id = f.delivery_id WHERE d.submission_id IN ({marks})"
            ") m LEFT JOIN records r ON r.digest = m.digest LEFT JOIN anchor_leaves l ON l.record_id = r.id"
            " LEFT JOIN anchor_batches b ON b.id = l.batch_id"
            " WHERE m.digest IS NOT NULL",
            submission_ids * 5,
        )

    async def message_evidence(self, submission_id: str) -> dict[str, list[sqlite3.Row]]:
        """The rows of one submission: deliveries, attempts, fetches, receipts, hand-off records."""
        sid = (submission_id,)
        return {
            "deliveries": await self.fetchall("SELECT * FROM deliveries WHERE submission_id = ? ORDER BY id", sid),
            "attempts": await self.fetchall(
                "SELECT a.* FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
                " WHERE d.submission_id = ? ORDER BY a.id",
                sid,
            ),
            "fetches": await self.fetchall(
                "SELECT f.* FROM fetches f JOIN deliveries d ON d.id = f.delivery_id"
                " WHERE d.submission_id = ? ORDER BY f.id",
                sid,
            ),
            "receipts": await self.fetchall(
                "SELECT r.* FROM receipts r JOIN deliveries d ON d.id = r.delivery_id WHERE d.submission_id = ?",
                sid,
            ),
            # Every answer of the upstream (one hand-off record per attempt it answered), oldest first.
            "handoffs": await self.fetchall(
                "SELECT r.delivery_id, r.digest FROM records r JOIN deliveries d ON d.id = r.delivery_id"
                " WHERE d.submission_id = ? AND r.type = 'handoff' ORDER BY r.created_at, r.id",
                sid,
            ),
        }

    async def records_anchoring(self, digests: list[str]) -> dict[str, sqlite3.Row]:
        """Per digest: its record body and type, and its anchoring leaf and batch (NULL when not batched)."""
        out: dict[str, sqlite3.Row] = {}
        for start in range(0, len(digests), _SQL_CHUNK):
            chunk = digests[start : start + _SQL_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            rows = await self.fetchall(
                "SELECT r.digest, r.type, r.body, l.batch_id, l.nonce, b.state AS batch_state,"
                " b.timestamp AS batch_timestamp, b.bitcoin_height, b.block_time, b.root"
                " FROM records r LEFT JOIN anchor_leaves l ON l.record_id = r.id"
                " LEFT JOIN anchor_batches b ON b.id = l.batch_id"
                f" WHERE r.digest IN ({marks})",
                chunk,
            )
            out.update((row["digest"], row) for row in rows)
        return out

    # -- webhooks: durable outgoing events ------------------------------------

    async def enqueue_event(self, db: AsyncConnection, event: str, payload: dict[str, Any], now: float) -> None:
        """Queue ``event`` for every configured webhook URL, inside the caller's transaction.

        Call it in the transaction that makes the change the event reports, so an
        event is sent if and only if the change was committed.
        """
        if event not in WEBHOOK_EVENTS:
            raise ValueError(f"unknown webhook event {event!r}")
        if not self.webhook_urls:
            return
        body = canonical_json(payload)
        await db.executemany(
            "INSERT INTO webhook_events (url, event, payload, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
            [(url, event, body, now, now) for url in self.webhook_urls],
        )

    async def _event_subjects(self, db: AsyncConnection, delivery_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """What every delivery event names: the message, the recipient, the delivery."""
        ids = sorted(set(delivery_ids))
        marks = ", ".join("?" for _ in ids)
        cursor = await db.execute(
            "SELECT d.id, d.recipient, d.submission_id, s.message_id FROM deliveries d"
            f" JOIN submissions s ON s.id = d.submission_id WHERE d.id IN ({marks})",
            ids,
        )
        return {
            row[0]: {"delivery_id": row[0], "recipient": row[1], "submission_id": row[2], "message_id": row[3]}
            for row in await cursor.fetchall()
        }

    async def _tracker_webhooks(
        self, db: AsyncConnection, fetches: Sequence[FetchWrite], receipts: Sequence[ReceiptWrite]
    ) -> None:
        """Events 'fetched' and 'acknowledged' for what write_tracker_events just recorded."""
        if not self.webhook_urls:
            return
        subjects = await self._event_subjects(db, [e.delivery_id for e in (*fetches, *receipts)])
        for f in fetches:
            payload = {**subjects[f.delivery_id], "at": iso_time(f.at), "method": f.method,
                       "classification": f.classification, "record": f.record.digest}
            await self.enqueue_event(db, "fetched", payload, f.at)
        for r in receipts:
            payload = {**subjects[r.delivery_id], "at": iso_time(r.at), "record": r.record.digest}
            await self.enqueue_event(db, "acknowledged", payload, r.at)

    async def due_webhook_events(self, now: float) -> list[sqlite3.Row]:
        """For each URL, its oldest pending event when due: events to one URL go out in order."""
        return await self.fetchall(
            "SELECT e.* FROM webhook_events e JOIN"
            " (SELECT url, MIN(id) AS id FROM webhook_events WHERE state = 'pending' GROUP BY url) h ON h.id = e.id"
            " WHERE e.next_attempt_at <= ? ORDER BY e.id",
            (now,),
        )

    async def next_webhook_due_at(self) -> float | None:
        row = await self.fetchone("SELECT MIN(next_attempt_at) FROM webhook_events WHERE state = 'pending'")
        return None if row is None else row[0]

    async def purge_webhook_events(self, before: float) -> int:
        """Delete events sent or given up before ``before``; pending ones are kept whatever their age."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM webhook_events WHERE state != 'pending' AND next_attempt_at < ?", (before,)
            )
            return cursor.rowcount

    async def finish_webhook_event(
        self, event_id: int, *, state: str, next_attempt_at: float, error: str | None
    ) -> None:
        """After one attempt: sent, retried at ``next_attempt_at``, or failed for good."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE webhook_events SET state = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                " WHERE id = ?",
                (state, next_attempt_at, error, event_id),
            )

    # -- tracker ---------------------------------------------------------

    @staticmethod
    async def insert_ack_token(
        db: AsyncConnection, *, token_sha256: str, delivery_id: int, target_url: str | None, now: float
    ) -> None:
        """One acknowledgment token (stored hashed), in the caller's transaction with its delivery record."""
        await db.execute(
            "INSERT INTO ack_tokens (token_sha256, delivery_id, target_url, created_at) VALUES (?, ?, ?, ?)",
            (token_sha256, delivery_id, target_url, now),
        )

    async def find_ack_links(self, token_sha256s: Sequence[str]) -> dict[str, sqlite3.Row]:
        """What an acknowledgment page shows and needs, for each known token hash.

        ``delivered_at`` is the upstream's acceptance when there is one, else the token's
        creation; ``acknowledged_at`` is NULL until the delivery's first acknowledgment.

        It is read at once on the calling thread (see Database.read_now), so it never waits for a thread
        hand-over, and sees only committed transactions; through fetchall only if that fails.
        """
        marks = ", ".join("?" for _ in token_sha256s)
        sql = (
            "SELECT t.token_sha256, t.delivery_id, t.target_url, t.created_at AS token_created_at,"
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
            rows = await self.fetchall(sql, token_sha256s)
        return {row["token_sha256"]: row for row in rows}

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
            Store._insert_rows(
                conn, "INSERT INTO personal (id, salt, ip, user_agent, created_at) VALUES (?, ?, ?, ?, ?)",
                [(first_id + n, e.personal.salt, e.personal.ip, e.personal.user_agent, e.at)
                 for n, e in enumerate(events)],
            )
            Store._insert_rows(
                conn, "INSERT INTO records (id, digest, type, body, delivery_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                # Each event's record is a receipt record (kind 'fetched' or 'acknowledged'):
                # Record.type would parse its JSON again.
                [(first_record + n, e.record.digest, "receipt", e.record.body, e.delivery_id, e.at)
                 for n, e in enumerate(events)],
            )
            Store._insert_rows(
                conn, "INSERT INTO anchor_leaves (record_id, digest, queued_at) VALUES (?, ?, ?)",
                [(first_record + n, e.record.digest, e.at) for n, e in enumerate(events)],
            )
            Store._insert_rows(
                conn,
                "INSERT INTO fetches (delivery_id, at, method, classification, reason, personal_id, record_digest)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(f.delivery_id, f.at, f.method, f.classification, f.reason, first_id + n, f.record.digest)
                 for n, f in enumerate(fetches)],
            )
            Store._insert_rows(
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

    @staticmethod
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

    async def purge_personal(self, before: float) -> int:
        """Delete raw IP addresses and user agents recorded before ``before``; returns how many rows.

        Records keep their salted commitments, so they still verify; fetches and receipts
        lose the link (ON DELETE SET NULL). Deletes in bounded transactions so writers
        are never held up for long.
        """
        total = 0
        while True:
            async with self.transaction() as db:
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

    # -- anchoring: leaves, batches, Merkle trees, calendar replies (relay.anchor.worker) --

    async def unbatched_leaves(self, limit: int) -> list[tuple[int, str]]:
        """(row id, digest) of up to ``limit`` leaves not yet in a batch, oldest first."""
        rows = await self.fetchall(
            "SELECT record_id, digest FROM anchor_leaves WHERE batch_id IS NULL ORDER BY queued_at LIMIT ?", (limit,)
        )
        return [(row[0], row[1]) for row in rows]

    async def save_anchor_batch(self, batch: NewAnchorBatch) -> int:
        """Store a batch, its leaves' nonces and positions, its tree and its calendar replies, in one transaction.

        Returns the batch id. Webhook event 'anchored' is queued when the batch is pending.
        """
        async with self.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO anchor_batches (root, created_at, leaves, state, attempts, next_attempt_at, timestamp)"
                " VALUES (?, ?, ?, ?, 1, ?, ?)",
                (batch.root, batch.created_at, len(batch.rowids), batch.state, batch.next_attempt_at, batch.timestamp),
            )
            batch_id = cursor.lastrowid
            nonce = ANCHOR_NONCE_BYTES
            # By record id, in queue order: nearly sequential pages.
            claimed = await db.executemany(
                "UPDATE anchor_leaves SET batch_id = ?, nonce = ?, position = ? WHERE record_id = ? AND batch_id IS NULL",
                (
                    (batch_id, batch.nonces[i * nonce : (i + 1) * nonce], i, rowid)
                    for i, rowid in enumerate(batch.rowids)
                ),
            )
            if claimed.rowcount != len(batch.rowids):  # the transaction is rolled back
                raise ConflictError(
                    f"{len(batch.rowids) - claimed.rowcount} of the batch's {len(batch.rowids)} leaves were batched"
                    " meanwhile by another process on this data directory; the batch is not stored"
                )
            await db.executemany(
                "INSERT INTO anchor_nodes (batch_id, level, chunk, hashes) VALUES (?, ?, ?, ?)",
                (
                    (batch_id, level, start // ANCHOR_CHUNK_BYTES, hashes[start : start + ANCHOR_CHUNK_BYTES])
                    for level, hashes in enumerate(batch.levels)
                    for start in range(0, len(hashes), ANCHOR_CHUNK_BYTES)
                ),
            )
            await self._insert_anchor_replies(db, batch_id, batch.replies, batch.created_at)
            if batch.state == "pending":
                await self._anchor_event(db, "anchored", batch_id, batch.created_at)
        return batch_id

    @staticmethod
    async def _insert_anchor_replies(
        db: AsyncConnection, batch_id: int, replies: Iterable[tuple[str, bytes]], now: float
    ) -> None:
        await db.executemany(
            "INSERT OR REPLACE INTO anchor_replies (batch_id, calendar, at, reply) VALUES (?, ?, ?, ?)",
            [(batch_id, calendar, now, reply) for calendar, reply in replies],
        )

    async def _anchor_event(self, db: AsyncConnection, event: str, batch_id: int, now: float) -> None:
        row = await (
            await db.execute("SELECT root, leaves, bitcoin_height FROM anchor_batches WHERE id = ?", (batch_id,))
        ).fetchone()
        payload = {"batch": batch_id, "root": row[0].hex(), "leaves": row[1]}
        if event == "confirmed":
            payload["bitcoin_height"] = row[2]
        await self.enqueue_event(db, event, payload, now)

    async def anchor_batches(self, states: Iterable[str], due_before: float | None = None) -> list[sqlite3.Row]:
        """Batches in ``states`` (optionally only those due before a time), oldest first."""
        states = tuple(states)
        marks = ", ".join("?" for _ in states)
        sql = f"SELECT * FROM anchor_batches WHERE state IN ({marks})"
        params: list[Any] = list(states)
        if due_before is not None:
            sql += " AND next_attempt_at <= ?"
            params.append(due_before)
        return await self.fetchall(sql + " ORDER BY id", params)

    async def anchor_reply_calendars(self, batch_id: int) -> set[str]:
        """The calendar URLs that accepted a batch's root."""
        rows = await self.fetchall("SELECT calendar FROM anchor_replies WHERE batch_id = ?", (batch_id,))
        return {row[0] for row in rows}

    async def update_anchor_batch(
        self,
        batch_id: int,
        *,
        now: float,
        timestamp: bytes | None,
        state: str,
        next_attempt_at: float,
        replies: Iterable[tuple[str, bytes]] = (),
        attempted: bool = False,
        bitcoin_height: int | None = None,
        block_time: int | None = None,
        resubmitted: bool = False,
    ) -> None:
        """Record a submission retry or an upgrade round of one batch (webhook event on a state change).

        A batch confirmed meanwhile (by another process) is left as it is.
        """
        async with self.transaction() as db:
            row = await (await db.execute("SELECT state FROM anchor_batches WHERE id = ?", (batch_id,))).fetchone()
            if row is not None and row[0] == "confirmed" and state != "confirmed":
                # Another process (`estampille anchor --now`) confirmed it since this round read it:
                # this round's older timestamp would drop the Bitcoin attestation. Nothing to add.
                return
            await db.execute(
                "UPDATE anchor_batches SET timestamp = COALESCE(?, timestamp), state = ?, next_attempt_at = ?,"
                " attempts = attempts + ?, bitcoin_height = COALESCE(?, bitcoin_height), block_time = COALESCE(?, block_time),"
                " confirmed_at = CASE WHEN ? = 'confirmed' THEN COALESCE(confirmed_at, ?) ELSE confirmed_at END,"
                " resubmitted_at = CASE WHEN ? THEN ? ELSE resubmitted_at END"
                " WHERE id = ?",
                (timestamp, state, next_attempt_at, int(attempted), bitcoin_height, block_time, state, now, resubmitted, now,
                 batch_id),
            )
            await self._insert_anchor_replies(db, batch_id, replies, now)
            if row is not None and row[0] != state and state in ("pending", "confirmed"):
                await self._anchor_event(db, "anchored" if state == "pending" else "confirmed", batch_id, now)

    async def anchor_leaf(self, digest: str) -> sqlite3.Row:
        """One leaf joined with its batch: what exporting its proof needs (NotFoundError if unknown)."""
        row = await self.fetchone(
            "SELECT l.digest, l.batch_id, l.nonce, l.position, b.root, b.leaves, b.state, b.timestamp"
            " FROM records r JOIN anchor_leaves l ON l.record_id = r.id LEFT JOIN anchor_batches b ON b.id = l.batch_id"
            " WHERE r.digest = ?",
            (digest,),
        )
        if row is None:
            raise NotFoundError(f"no evidence record with digest {digest} is queued for anchoring")
        return row

    async def anchor_nodes(self, batch_id: int, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Nodes (level, index) of a batch's tree, read from the chunks that hold them."""
        wanted = list(wanted)
        per_chunk = ANCHOR_CHUNK_BYTES // 32
        chunks: dict[tuple[int, int], bytes] = {}
        for level, chunk in {(level, index // per_chunk) for level, index in wanted}:
            row = await self.fetchone(
                "SELECT hashes FROM anchor_nodes WHERE batch_id = ? AND level = ? AND chunk = ?",
                (batch_id, level, chunk),
            )
            if row is None:
                raise StoreError(f"anchor batch {batch_id} lacks tree chunk {level}/{chunk}")
            chunks[(level, chunk)] = row[0]
        out = {}
        for level, index in wanted:
            offset = (index % per_chunk) * 32
            out[(level, index)] = chunks[(level, index // per_chunk)][offset : offset + 32]
        return out

    async def anchor_summary(self) -> dict[str, Any]:
        """Unbatched leaves (count, oldest queued time) and confirmed batches (count, leaves, last height)."""
        leaves = await self.fetchone("SELECT COUNT(*), MIN(queued_at) FROM anchor_leaves WHERE batch_id IS NULL")
        confirmed = await self.fetchone(
            "SELECT COUNT(*), COALESCE(SUM(leaves), 0), MAX(bitcoin_height) FROM anchor_batches WHERE state = 'confirmed'"
        )
        return {
            "unbatched": leaves[0],
            "oldest_queued_at": leaves[1],
            "confirmed_batches": confirmed[0],
            "confirmed_leaves": confirmed[1],
            "last_height": confirmed[2],
        }
