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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from relay.errors import ConflictError, DiskFullError, NotFoundError, StoreError
from relay.evidence.records import Record, canonical_json, iso_time
from relay.store.durable import fsync_directory, write_durably

T = TypeVar("T")
log = logging.getLogger("estampille.store")

# Each entry moves the schema one version forward; never edit a released entry.
MIGRATIONS: tuple[str, ...] = (
    # 1: submissions, deliveries, attempts, evidence, anchoring, tracker, webhooks.
    """
    CREATE TABLE submissions (
        id             TEXT PRIMARY KEY,
        kind           TEXT NOT NULL DEFAULT 'mail' CHECK (kind IN ('mail', 'dsn')),
        received_at    REAL NOT NULL,
        mail_from      TEXT NOT NULL,
        mail_options   TEXT NOT NULL DEFAULT '[]',
        client_address TEXT NOT NULL,
        auth_user      TEXT,
        tls            TEXT,
        message_id     TEXT,
        subject        TEXT,
        size           INTEGER NOT NULL,
        data_sha256    TEXT NOT NULL,
        record_digest  TEXT REFERENCES records(digest)
    );
    CREATE INDEX submissions_message_id ON submissions(message_id);
    CREATE INDEX submissions_received_at ON submissions(received_at);

    CREATE TABLE deliveries (
        id              INTEGER PRIMARY KEY,
        submission_id   TEXT NOT NULL REFERENCES submissions(id),
        recipient       TEXT NOT NULL,
        rcpt_options    TEXT NOT NULL DEFAULT '[]',
        state           TEXT NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'sending', 'deferred', 'delivered', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_code       INTEGER,
        last_reply      TEXT,
        copy_sha256     TEXT,
        record_digest   TEXT REFERENCES records(digest),
        handoff_digest  TEXT REFERENCES records(digest),
        updated_at      REAL NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
    CREATE INDEX deliveries_submission ON deliveries(submission_id);

    CREATE TABLE attempts (
        id            INTEGER PRIMARY KEY,
        delivery_id   INTEGER NOT NULL REFERENCES deliveries(id),
        started_at    REAL NOT NULL,
        finished_at   REAL NOT NULL,
        outcome       TEXT NOT NULL CHECK (outcome IN ('delivered', 'deferred', 'failed')),
        code          INTEGER,
        reply         TEXT NOT NULL,
        queue_id      TEXT,
        upstream_host TEXT,
        tls           TEXT
    );
    CREATE INDEX attempts_delivery ON attempts(delivery_id);

    CREATE TABLE records (
        digest        TEXT PRIMARY KEY,
        type          TEXT NOT NULL,
        body          BLOB NOT NULL,
        submission_id TEXT,
        delivery_id   INTEGER,
        created_at    REAL NOT NULL
    );
    CREATE INDEX records_submission ON records(submission_id);
    CREATE INDEX records_delivery ON records(delivery_id);

    -- Acknowledgment tokens are stored hashed; target_url is set for rewritten links.
    CREATE TABLE ack_tokens (
        token_sha256 TEXT PRIMARY KEY,
        delivery_id  INTEGER NOT NULL REFERENCES deliveries(id),
        target_url   TEXT,
        created_at   REAL NOT NULL
    );
    CREATE INDEX ack_tokens_delivery ON ack_tokens(delivery_id);

    -- Raw personal data, deleted at the end of its retention; records keep only commitments.
    CREATE TABLE personal (
        id         INTEGER PRIMARY KEY,
        salt       BLOB NOT NULL,
        ip         TEXT,
        user_agent TEXT,
        created_at REAL NOT NULL
    );

    CREATE TABLE fetches (
        id             INTEGER PRIMARY KEY,
        delivery_id    INTEGER NOT NULL REFERENCES deliveries(id),
        at             REAL NOT NULL,
        method         TEXT NOT NULL,
        classification TEXT NOT NULL CHECK (classification IN ('scanner', 'person')),
        reason         TEXT NOT NULL,
        personal_id    INTEGER REFERENCES personal(id) ON DELETE SET NULL,
        record_digest  TEXT REFERENCES records(digest)
    );
    CREATE INDEX fetches_delivery ON fetches(delivery_id);

    CREATE TABLE receipts (
        delivery_id   INTEGER PRIMARY KEY REFERENCES deliveries(id),
        at            REAL NOT NULL,
        personal_id   INTEGER REFERENCES personal(id) ON DELETE SET NULL,
        record_digest TEXT NOT NULL REFERENCES records(digest)
    );

    CREATE TABLE anchor_batches (
        id              INTEGER PRIMARY KEY,
        root            BLOB NOT NULL,
        created_at      REAL NOT NULL,
        leaves          INTEGER NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('submitting', 'pending', 'confirmed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        timestamp       BLOB,
        bitcoin_height  INTEGER,
        block_time      INTEGER,
        confirmed_at    REAL,
        resubmitted_at  REAL
    );
    CREATE INDEX anchor_batches_state ON anchor_batches(state, next_attempt_at);

    CREATE TABLE anchor_leaves (
        digest    TEXT PRIMARY KEY REFERENCES records(digest),
        queued_at REAL NOT NULL,
        batch_id  INTEGER REFERENCES anchor_batches(id),
        nonce     BLOB,
        path      BLOB
    );
    CREATE INDEX anchor_leaves_unbatched ON anchor_leaves(queued_at) WHERE batch_id IS NULL;
    CREATE INDEX anchor_leaves_batch ON anchor_leaves(batch_id);

    CREATE TABLE webhook_events (
        id              INTEGER PRIMARY KEY,
        url             TEXT NOT NULL,
        event           TEXT NOT NULL,
        payload         BLOB NOT NULL,
        created_at      REAL NOT NULL,
        state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX webhook_events_due ON webhook_events(state, next_attempt_at);
    """,
    # 2: the privacy purge finds old personal rows, and the fetches and receipts naming them, by index.
    """
    CREATE INDEX personal_created_at ON personal(created_at);
    CREATE INDEX fetches_personal ON fetches(personal_id);
    CREATE INDEX receipts_personal ON receipts(personal_id);
    """,
    # 3: message files deleted at the end of retention.messages_days; records keep their digests.
    """
    CREATE TABLE purged_messages (
        sha256    TEXT PRIMARY KEY,
        purged_at REAL NOT NULL
    );
    """,
    # 4: anchoring keeps each batch's Merkle tree in chunks and each leaf's position in it
    # (a leaf's path is read from the tree: 64 bytes a leaf instead of 32 per level), and
    # the calendars' replies. anchor_leaves.path stays unused.
    """
    ALTER TABLE anchor_leaves ADD COLUMN position INTEGER;
    CREATE TABLE anchor_nodes (
        batch_id INTEGER NOT NULL REFERENCES anchor_batches(id),
        level    INTEGER NOT NULL,
        chunk    INTEGER NOT NULL,
        hashes   BLOB NOT NULL,
        PRIMARY KEY (batch_id, level, chunk)
    );
    CREATE TABLE anchor_replies (
        batch_id INTEGER NOT NULL REFERENCES anchor_batches(id),
        calendar TEXT NOT NULL,
        at       REAL NOT NULL,
        reply    BLOB NOT NULL,
        PRIMARY KEY (batch_id, calendar)
    );
    """,
    # 5: certified copies up to INLINE_MAX octets live here (received messages too, since), written
    # in the transaction of their delivery record, rather than as files: the group commit's one
    # WAL fsync then covers them, where a file cost two fsyncs of its own before each sending.
    """
    CREATE TABLE message_bytes (
        sha256 TEXT PRIMARY KEY,
        data   BLOB NOT NULL
    );
    """,
    # 6: records are looked up by delivery only for hand-offs (message_digests, message_evidence),
    # and never by submission; yet every record, each page fetch's included, went into both indexes.
    """
    DROP INDEX records_submission;
    DROP INDEX records_delivery;
    CREATE INDEX records_handoff ON records(delivery_id) WHERE type = 'handoff';
    """,
    # 7: every page fetch looks its token up by hash; keyed by the hash alone (WITHOUT ROWID),
    # that is one B-tree search instead of the key's index then the table (8.1 to 6.8 us a
    # token, measured on the tracker bench's lookup with fetches committed in between).
    """
    CREATE TABLE ack_tokens_by_hash (
        token_sha256 TEXT PRIMARY KEY,
        delivery_id  INTEGER NOT NULL REFERENCES deliveries(id),
        target_url   TEXT,
        created_at   REAL NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO ack_tokens_by_hash SELECT token_sha256, delivery_id, target_url, created_at FROM ack_tokens;
    DROP TABLE ack_tokens;
    ALTER TABLE ack_tokens_by_hash RENAME TO ack_tokens;
    CREATE INDEX ack_tokens_delivery ON ack_tokens(delivery_id);
    """,
    # 8: every record, each page fetch's included, was queued for anchoring in a table keyed by
    # its random digest: about one more page written a fetch (16 of the 39 us of CPU a fetch
    # took in the database thread). Leaves are keyed by their record's id instead, which grows
    # in order; records get that id as an explicit key so that VACUUM cannot renumber it.
    """
    CREATE TABLE records_by_id (
        id            INTEGER PRIMARY KEY,
        digest        TEXT NOT NULL UNIQUE,
        type          TEXT NOT NULL,
        body          BLOB NOT NULL,
        submission_id TEXT,
        delivery_id   INTEGER,
        created_at    REAL NOT NULL
    );
    INSERT INTO records_by_id SELECT rowid, digest, type, body, submission_id, delivery_id, created_at FROM records;
    CREATE TABLE anchor_leaves_by_record (
        record_id INTEGER PRIMARY KEY REFERENCES records(id),
        digest    TEXT NOT NULL,  -- the record's: a batch is formed from this table alone
        queued_at REAL NOT NULL,
        batch_id  INTEGER REFERENCES anchor_batches(id),
        nonce     BLOB,
        position  INTEGER
    );
    INSERT INTO anchor_leaves_by_record
        SELECT r.rowid, l.digest, l.queued_at, l.batch_id, l.nonce, l.position
        FROM anchor_leaves l JOIN records r ON r.digest = l.digest;
    -- Every row dropped lives on in the copies: no need to overwrite the freed pages, which
    -- kept their old content in memory until the end of the statement (600 MB for 10^6 records).
    PRAGMA secure_delete=OFF;
    DROP TABLE anchor_leaves;
    DROP TABLE records;
    PRAGMA secure_delete=ON;
    ALTER TABLE records_by_id RENAME TO records;
    ALTER TABLE anchor_leaves_by_record RENAME TO anchor_leaves;
    CREATE INDEX records_handoff ON records(delivery_id) WHERE type = 'handoff';
    CREATE INDEX anchor_leaves_unbatched ON anchor_leaves(queued_at) WHERE batch_id IS NULL;
    CREATE INDEX anchor_leaves_batch ON anchor_leaves(batch_id);
    """,
    # 9 (poison messages, relay/store/held.py): crashes of the relay in a row with a delivery in flight.
    """
    CREATE TABLE delivery_crashes (
        delivery_id     INTEGER PRIMARY KEY REFERENCES deliveries(id),
        crashes         INTEGER NOT NULL
    );
    """,
    # 10 (anchoring): a batch whose Bitcoin attestations no block header has checked yet is 'attested',
    # not 'confirmed'. SQLite cannot change a CHECK constraint: the table is rebuilt, ids kept.
    """
    CREATE TABLE anchor_batches_checked (
        id              INTEGER PRIMARY KEY,
        root            BLOB NOT NULL,
        created_at      REAL NOT NULL,
        leaves          INTEGER NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('submitting', 'pending', 'attested', 'confirmed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        timestamp       BLOB,
        bitcoin_height  INTEGER,
        block_time      INTEGER,
        confirmed_at    REAL,
        resubmitted_at  REAL
    );
    -- A batch confirmed before then had at most its lowest attestations checked, and its stored
    -- timestamp holds every calendar's: it goes back to 'attested' and the next upgrade round
    -- checks each of them (a header source configured) before it is confirmed again.
    INSERT INTO anchor_batches_checked
        SELECT id, root, created_at, leaves, CASE WHEN state = 'confirmed' THEN 'attested' ELSE state END,
               attempts, next_attempt_at, timestamp, bitcoin_height, block_time, confirmed_at, resubmitted_at
        FROM anchor_batches;
    DROP TABLE anchor_batches;
    ALTER TABLE anchor_batches_checked RENAME TO anchor_batches;
    CREATE INDEX anchor_batches_state ON anchor_batches(state, next_attempt_at);
    """,
    # 11: delivery status reports (relay.store.reports): each copy's return token, drawn before
    # it is sent, and the reports received for it (their bytes in message_bytes).
    """
    CREATE TABLE return_tokens (
        token       TEXT PRIMARY KEY,
        delivery_id INTEGER NOT NULL UNIQUE REFERENCES deliveries(id),
        created_at  REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE delivery_reports (
        id            INTEGER PRIMARY KEY,
        delivery_id   INTEGER NOT NULL REFERENCES deliveries(id),
        received_at   REAL NOT NULL,
        action        TEXT NOT NULL,
        status        TEXT NOT NULL,
        remote_mta    TEXT,
        diagnostic    TEXT,
        report_sha256 TEXT NOT NULL,
        record_digest TEXT NOT NULL REFERENCES records(digest)
    );
    CREATE INDEX delivery_reports_delivery ON delivery_reports(delivery_id);
    """,
    # 12: a proof bundle's copies carry live acknowledgment links: building one marks their tokens
    # disclosed (by the digest of its disclosure record), and the tracker refuses them from then
    # on, as it refuses expired ones; each refusal is kept (relay/store/tokens.py).
    """
    ALTER TABLE ack_tokens ADD COLUMN disclosed_by TEXT;
    CREATE TABLE token_refusals (
        id          INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        at          REAL NOT NULL,
        method      TEXT NOT NULL,
        reason      TEXT NOT NULL  -- 'disclosed' or 'expired'
    );
    CREATE INDEX token_refusals_delivery ON token_refusals(delivery_id);
    -- A message's disclosures are read with it; records are otherwise not indexed by submission.
    CREATE INDEX records_disclosure ON records(submission_id) WHERE type = 'disclosure';
    """,
    # 13: law (relay/law, relay/store/law.py): each convocation's meeting date, read at intake or set by
    # an admin, and its sender's assembly and urgency then. Deadlines are computed from them, never stored.
    """
    CREATE TABLE convocations (
        submission_id  TEXT PRIMARY KEY REFERENCES submissions(id),
        meeting_date   TEXT,  -- ISO date in Paris; NULL: unknown
        meeting_time   TEXT,  -- HH:MM in Paris; NULL: unknown
        meeting_source TEXT,  -- header, rule, subject, text or admin
        assembly       TEXT,  -- NULL: no assembly configured for the sender
        urgent         INTEGER NOT NULL DEFAULT 0,
        updated_at     REAL NOT NULL
    );
    CREATE INDEX convocations_meeting_date ON convocations(meeting_date) WHERE meeting_date IS NOT NULL;
    -- A reminder is a message of the relay's own (a submission of kind 'dsn', the kind the relay
    -- generates, delivered without a new link) to the member of one convocation delivery.
    CREATE TABLE reminders (
        id            INTEGER PRIMARY KEY,
        delivery_id   INTEGER NOT NULL REFERENCES deliveries(id),  -- the member's copy of the convocation
        submission_id TEXT NOT NULL REFERENCES submissions(id),  -- the reminder
        number        INTEGER NOT NULL,  -- 1, 2...: the Nth reminder to that member
        sent_at       REAL NOT NULL,
        UNIQUE (delivery_id, number)
    );
    CREATE INDEX reminders_submission ON reminders(submission_id);
    """,
    # 14: RFC 3161 tokens (relay/anchor/tsa.py, relay/store/tsa.py): one per batch root, asked when the
    # batch is formed and again with backoff until a TSA gives a valid one.
    """
    CREATE TABLE tsa_tokens (
        batch_id        INTEGER PRIMARY KEY REFERENCES anchor_batches(id),
        state           TEXT NOT NULL,     -- 'waiting' (asked again at next_attempt_at) or 'stamped'
        preimage        BLOB NOT NULL,     -- the bytes whose SHA-256 is the batch root, as the TSA is asked
        attempts        INTEGER NOT NULL,
        next_attempt_at REAL,
        last_error      TEXT,
        authority       TEXT,              -- the configured name of the TSA that stamped it
        qualified       INTEGER,           -- as the operator declared that TSA
        trust_list      TEXT,
        tsr             BLOB,              -- the TimeStampResp, DER, as received and checked
        chain_pem       BLOB,              -- its signing certificate, then the CAs it was checked against
        token_time      REAL,              -- the token's genTime, Unix
        policy          TEXT
    );
    CREATE INDEX tsa_tokens_waiting ON tsa_tokens(next_attempt_at) WHERE state = 'waiting';
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
BLOB_DIR = "messages"
# Received messages and certified copies up to this size live in the database (message_bytes),
# written in the transaction of the rows that name them: that commit's one WAL fsync covers
# them, where a file costs its own fsyncs, a new inode and a directory entry. Larger ones are
# files in BLOB_DIR: bounded so the write-ahead log stays small and a copy is bound once.
INLINE_MAX = 256 * 1024
DB_NAME = "estampille.sqlite3"
PAGE_CACHE_KIB = 32 * 1024  # the writer connection's page cache (see Store.open)
PURGE_BATCH = 1000  # personal rows deleted per transaction by the privacy purge
# Rows per INSERT statement of the tracker's writes (Store._insert_rows), largest first:
# a few statement shapes per table, so they stay in the connection's statement cache.
TRACKER_ROWS_PER_INSERT = (64, 8, 1)
# A batch of writers none of whom is urgent (deliveries recording what they did) waits this long
# for company unless it already has GROUP_TARGET writers: fewer, larger commits, one fsync each.
# Each commit rewrites every B-tree page it touches, so fewer, fuller commits write less: on the
# relay bench, 10 ms and 16 (with upstream.concurrency 32, now 64, to cover the wait) gave 10.5
# writers a commit instead of 6.0, 15 % fewer octets written and more deliveries per second
# than 3 ms and 8. Urgent writers (a client waiting for its 250, the default) never wait.
GROUP_TARGET = 16
GROUP_LINGER = 0.010

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
WEBHOOK_EVENTS = (
    "accepted", "delivered", "deferred", "failed", "fetched", "acknowledged", "anchored", "confirmed",
    "copy.unlinked", "convocation.late",
)


_Statement = tuple[bool, str, Any]  # (executemany?, SQL, parameters)


async def _insert_row(db: Any, table: str, row: dict[str, Any]) -> None:
    """INSERT one row given as {column: value}; the column names are ours, never input."""
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    await db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))


class _NoResult:
    """What a recorded statement returns: nothing can be read from it."""

    def __getattr__(self, name: str) -> Any:
        raise StoreError("a batched write cannot read a statement's result; use Store.write(..., reads=True)")


class _Recorder:
    """The connection a batched writer sees: statements are collected, to run later in one go."""

    def __init__(self) -> None:
        self.statements: list[_Statement] = []

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> _NoResult:
        self.statements.append((False, sql, parameters if isinstance(parameters, dict) else tuple(parameters)))
        return _NoResult()

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Iterable[Any]]) -> _NoResult:
        self.statements.append((True, sql, [p if isinstance(p, dict) else tuple(p) for p in seq_of_parameters]))
        return _NoResult()


def _apply_statements(conn: sqlite3.Connection, writers: list[list[_Statement]], begin: bool) -> list[BaseException | None]:
    """In the database thread: each writer's statements in its own SAVEPOINT, then COMMIT.

    Returns each writer's error (None when it succeeded); a failed COMMIT raises.
    """
    if begin:
        conn.execute("BEGIN IMMEDIATE")
    errors: list[BaseException | None] = []
    for statements in writers:
        conn.execute("SAVEPOINT writer")
        try:
            for many, sql, parameters in statements:
                (conn.executemany if many else conn.execute)(sql, parameters).close()
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO writer")
            errors.append(exc)
        else:
            errors.append(None)
        conn.execute("RELEASE writer")
    conn.execute("COMMIT")
    return errors


class Store:
    """The database and the message directory under one data directory."""

    def __init__(self, data_dir: Path, db: aiosqlite.Connection) -> None:
        self.data_dir = data_dir
        self.blob_dir = data_dir / BLOB_DIR
        self._db = db
        self._reader: aiosqlite.Connection | None = None  # fetchall's own connection, see open
        self._write_lock = asyncio.Lock()
        self._pending_writes: list[tuple[Any, bool, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._urgent = asyncio.Event()
        self._point_reader: sqlite3.Connection | None = None  # see _read_now
        # Set by the service from webhooks.urls; enqueue_event queues one row per URL.
        self.webhook_urls: tuple[str, ...] = ()

    # -- lifecycle -------------------------------------------------------

    @classmethod
    async def open(cls, data_dir: Path) -> Store:
        """Open (creating if needed) the store under ``data_dir`` and migrate it."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (data_dir / BLOB_DIR).mkdir(exist_ok=True, mode=0o700)
        db = None
        try:
            db = await aiosqlite.connect(data_dir / DB_NAME, isolation_level=None)
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            # Temporary data (statement journals, which foreign keys make SQLite keep for each
            # statement) stays in memory rather than temporary files: for the 10^6 UPDATEs of an
            # anchoring batch, system CPU went from 8.5 s to 1.4 s.
            await db.execute("PRAGMA temp_store=MEMORY")
            # The tracker inserts each page fetch into indexes keyed by random digests: with
            # SQLite's default 2 MB page cache those inserts and the link lookups kept reading
            # pages back from the OS. An upper bound, used only as the database grows.
            await db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            # Deleted rows are overwritten, not just unlinked: purged IP addresses and user
            # agents must not linger in free pages (privacy.retention_days).
            await db.execute("PRAGMA secure_delete=ON")
            store = cls(data_dir, db)
            await store._migrate()
            # Reads (fetchall) have a read-only connection of their own: on the writer's, a read
            # between the statements of an open transaction() saw its uncommitted rows, and
            # waited behind every write in the database thread.
            store._reader = await aiosqlite.connect(
                (data_dir / DB_NAME).resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None
            )
            store._reader.row_factory = aiosqlite.Row
        except (sqlite3.Error, StoreError) as exc:  # a migration refused, or the database unusable
            if db is not None:
                await db.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open database in {data_dir}: {exc}") from exc
        return store

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)  # let queued writers commit
        if self._point_reader is not None:
            self._point_reader.close()
        if self._reader is not None:
            await self._reader.close()
        await self._db.close()

    async def _migrate(self) -> None:
        (version,) = await (await self._db.execute("PRAGMA user_version")).fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this Estampille ({SCHEMA_VERSION}); upgrade it"
            )
        if version == SCHEMA_VERSION:
            return
        # SQLite's way to rebuild a table others refer to: foreign keys off (it is a no-op inside
        # a transaction), then checked before each migration commits.
        await self._db.execute("PRAGMA foreign_keys=OFF")
        for number in range(version, SCHEMA_VERSION):
            if version:  # not a new database
                log.info("migrating the database in %s from schema version %d to %d", self.data_dir, number,
                         number + 1)
            started = time.monotonic()
            # executescript commits first, so the transaction begins in the script and stays open.
            await self._db.executescript(
                "BEGIN IMMEDIATE;\n" + MIGRATIONS[number] + f"\nPRAGMA user_version={number + 1};"
            )
            broken = await self._db.execute_fetchall("PRAGMA foreign_key_check")
            if broken:
                await self._db.rollback()
                table, rowid, parent, _ = broken[0]
                raise StoreError(
                    f"migration to schema version {number + 1} left {len(broken)} broken references"
                    f" (the first: {table} row {rowid} names a missing {parent} row), so it was rolled back and"
                    f" the database stays at version {number}: restore a backup, or report this with the database"
                )
            await self._db.commit()
            if version:
                log.info("migrated to schema version %d in %.1f s", number + 1, time.monotonic() - started)
        await self._db.execute("PRAGMA foreign_keys=ON")

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; committed when the block exits without error."""
        async with self._write_lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot begin a transaction: {exc}") from exc
            try:
                yield self._db
            except BaseException:
                await self._db.rollback()
                raise
            try:
                await self._db.commit()
            except sqlite3.Error as exc:
                await self._db.rollback()
                raise StoreError(f"commit failed: {exc}") from exc

    async def write(self, work: Callable[[Any], Awaitable[T]], *, reads: bool = False, urgent: bool = True) -> T:
        """Run ``work(db)`` atomically and return its result once it is committed (group commit).

        Writers that arrive while a commit is in progress share the next transaction, each in
        its own SAVEPOINT: one writer's failure rolls back only its own statements, and every
        writer gets its answer only after the shared COMMIT (one fsync for all of them).
        A writer cancelled while waiting may still be committed.

        Unless ``reads`` is true, ``db`` only records ``execute``/``executemany`` calls, and the
        whole batch runs in one trip to the database thread: such a writer cannot use a
        statement's result (a cursor, a rowcount); a writer that must, passes ``reads=True``.

        A writer that is not ``urgent`` may wait up to GROUP_LINGER for others to share its commit.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending_writes.append((work, reads, future))
        if urgent:
            self._urgent.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_writes())
        return await future

    async def _flush_writes(self) -> None:
        while self._pending_writes:
            if not self._urgent.is_set() and len(self._pending_writes) < GROUP_TARGET:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(GROUP_LINGER):
                        await self._urgent.wait()
            async with self._write_lock:
                self._urgent.clear()
                batch, self._pending_writes = self._pending_writes, []
                outcomes = await self._run_batch(batch)
            for (_, _, future), (result, error) in zip(batch, outcomes):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

    async def _run_batch(self, batch: list[tuple[Any, bool, asyncio.Future[Any]]]) -> list[tuple[Any, BaseException | None]]:
        outcomes: list[tuple[Any, BaseException | None]] = [(None, None)] * len(batch)
        recorded: list[tuple[int, list[_Statement], Any]] = []
        readers: list[int] = []
        for number, (work, reads, _) in enumerate(batch):
            if reads:
                readers.append(number)
                continue
            recorder = _Recorder()
            try:
                result = await work(recorder)  # no I/O: statements are only collected
            except Exception as exc:  # noqa: BLE001 - handed to that writer alone
                outcomes[number] = (None, exc)
            else:
                recorded.append((number, recorder.statements, result))
        try:
            if readers:
                await self._db.execute("BEGIN IMMEDIATE")
                for number in readers:
                    outcomes[number] = await self._run_reader(batch[number][0])
            errors = await self._db._execute(  # aiosqlite's own thread, one trip for all
                _apply_statements, self._db._conn, [statements for _, statements, _ in recorded], not readers
            )
        except (sqlite3.Error, asyncio.CancelledError) as exc:
            if self._db.in_transaction:
                await self._db.rollback()
            error = StoreError(f"transaction failed: {exc}")
            return [(None, error) for _ in batch]
        for (number, _, result), error in zip(recorded, errors):
            outcomes[number] = (None, error) if error is not None else (result, None)
        return outcomes

    async def _run_reader(self, work: Callable[[Any], Awaitable[Any]]) -> tuple[Any, BaseException | None]:
        await self._db.execute("SAVEPOINT writer")
        try:
            result = await work(self._db)
        except Exception as exc:  # noqa: BLE001 - handed to that writer alone
            await self._db.execute("ROLLBACK TO writer")
            await self._db.execute("RELEASE writer")
            return None, exc
        await self._db.execute("RELEASE writer")
        return result, None

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        # One trip to the reader's thread, and the statement is reset at once: cursors left
        # open by many concurrent readers kept cached statements busy, so each query was
        # prepared again (about 4 ms per lookup at 2,000 in flight, against 0.15 ms).
        try:
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        """The first row, or None (for queries that select at most a few rows)."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

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
    async def insert_bytes(db: aiosqlite.Connection, sha256: str, data: bytes) -> None:
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
        db: aiosqlite.Connection,
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
    async def insert_records(db: aiosqlite.Connection, records: Sequence[Record], *, now: float) -> None:
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

        def target() -> sqlite3.Connection:
            return sqlite3.connect(dest, check_same_thread=False)

        def self_contained() -> None:
            # One file, no -wal beside it. The cursor is closed before the connection:
            # a statement left open makes close() lazy, and the file would still
            # change after the caller has fingerprinted it.
            cursor = conn.execute("PRAGMA journal_mode=DELETE")
            cursor.fetchall()
            cursor.close()

        conn = await asyncio.to_thread(target)
        try:
            # The lock keeps an open transaction of this process out of the copy.
            async with self._write_lock:
                await self._db.backup(conn, pages=-1)
            await asyncio.to_thread(self_contained)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot back up the database to {dest}: {exc}") from exc
        finally:
            await asyncio.to_thread(conn.close)

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
            "SELECT COUNT(*), MIN(created_at) FROM anchor_batches WHERE state IN ('submitting', 'pending', 'attested')"
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
    async def insert_submission(db: aiosqlite.Connection, sub: dict[str, Any], recipients: list[tuple[str, str]]) -> None:
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

    async def claim_due(self, now: float, limit: int) -> list[aiosqlite.Row]:
        """Mark up to ``limit`` due deliveries 'sending' and return them joined with their submission."""

        async def claim(db: aiosqlite.Connection) -> list[aiosqlite.Row]:
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
        db: aiosqlite.Connection, delivery_id: int, copy_sha256: str, record_digest: str, now: float
    ) -> None:
        await db.execute(
            "UPDATE deliveries SET copy_sha256 = ?, record_digest = ?, updated_at = ? WHERE id = ?",
            (copy_sha256, record_digest, now, delivery_id),
        )

    @staticmethod
    async def finish_attempt(db: aiosqlite.Connection, attempt: dict[str, Any], *, state: str,
                             next_attempt_at: float, handoff_digest: str | None) -> None:
        """Record one attempt (the attempts columns in ``attempt``) and move its delivery to ``state``."""
        await _insert_row(db, "attempts", attempt)
        await db.execute(
            "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, last_code = ?,"
            " last_reply = ?, handoff_digest = COALESCE(?, handoff_digest), updated_at = ? WHERE id = ?",
            (state, next_attempt_at, attempt["code"], attempt["reply"], handoff_digest,
             attempt["finished_at"], attempt["delivery_id"]),
        )

    async def pending_deliveries(self) -> list[aiosqlite.Row]:
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

    async def delivery_states(self, submission_id: str) -> list[aiosqlite.Row]:
        """Each recipient of a submission with its state and last reply."""
        return await self.fetchall(
            "SELECT id, recipient, state, attempts, last_code, last_reply, copy_sha256, record_digest, handoff_digest"
            " FROM deliveries WHERE submission_id = ? ORDER BY id",
            (submission_id,),
        )

    # -- certify: what a certified copy adds to its submission ----------------

    @staticmethod
    async def set_generated_message_id(db: aiosqlite.Connection, submission_id: str, message_id: str) -> None:
        """Record the Message-ID certify added to a message that had none (proofs are found by it)."""
        await db.execute(
            "UPDATE submissions SET message_id = ? WHERE id = ? AND message_id IS NULL", (message_id, submission_id)
        )

    # -- proofs: messages by Message-ID, search, evidence of one message ----

    async def search_submissions(
        self, *, query: str = "", since: float | None = None, until: float | None = None, limit: int, offset: int
    ) -> tuple[list[aiosqlite.Row], int]:
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

    async def message_digests(self, submission_ids: list[str]) -> list[aiosqlite.Row]:
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
            " UNION ALL SELECT d.submission_id, p.record_digest FROM delivery_reports p JOIN deliveries d"
            f"  ON d.id = p.delivery_id WHERE d.submission_id IN ({marks})"
            ") m LEFT JOIN records r ON r.digest = m.digest LEFT JOIN anchor_leaves l ON l.record_id = r.id"
            " LEFT JOIN anchor_batches b ON b.id = l.batch_id"
            " WHERE m.digest IS NOT NULL",
            submission_ids * 6,
        )

    async def message_evidence(self, submission_id: str) -> dict[str, list[aiosqlite.Row]]:
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

    async def records_anchoring(self, digests: list[str]) -> dict[str, aiosqlite.Row]:
        """Per digest: its record body and type, and its anchoring leaf and batch (NULL when not batched)."""
        out: dict[str, aiosqlite.Row] = {}
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

    async def enqueue_event(self, db: aiosqlite.Connection, event: str, payload: dict[str, Any], now: float) -> None:
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

    async def _event_subjects(self, db: aiosqlite.Connection, delivery_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
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
        self, db: aiosqlite.Connection, fetches: Sequence[FetchWrite], receipts: Sequence[ReceiptWrite]
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

    async def due_webhook_events(self, now: float) -> list[aiosqlite.Row]:
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
        db: aiosqlite.Connection, *, token_sha256: str, delivery_id: int, target_url: str | None, now: float
    ) -> None:
        """One acknowledgment token (stored hashed), in the caller's transaction with its delivery record."""
        await db.execute(
            "INSERT INTO ack_tokens (token_sha256, delivery_id, target_url, created_at) VALUES (?, ?, ?, ?)",
            (token_sha256, delivery_id, target_url, now),
        )

    async def find_ack_links(self, token_sha256s: Sequence[str]) -> dict[str, aiosqlite.Row]:
        """What an acknowledgment page shows and needs, for each known token hash.

        ``delivered_at`` is the upstream's acceptance when there is one, else the token's
        creation; ``acknowledged_at`` is NULL until the delivery's first acknowledgment.

        It is read at once on the calling thread (see _read_now), so it never waits for a thread
        hand-over, and sees only committed transactions; through fetchall only if that fails.
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
        rows = self._read_now(sql, token_sha256s)
        if rows is None:
            rows = await self.fetchall(sql, token_sha256s)
        return {row["token_sha256"]: row for row in rows}

    def _read_now(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row] | None:
        """Rows read on the calling (event loop) thread through a read-only connection of its
        own; None if that fails (the caller then uses fetchall).

        In WAL mode a reader never waits for the writer; with timeout=0 it never sleeps on a
        lock either (SQLITE_BUSY, as in a WAL recovery, gives None). An indexed read costs about
        12 us. This connection's page cache is emptied by every commit, where the writer's own
        stays warm, but a read in the database thread cost two thread hand-overs and took
        that thread from the writes: on the tracker bench (fetches committed every 100 ms),
        reading every lookup here, rather than only those asked while a writer holds the
        database, took the server CPU from a median of 257 to 217 us a page (6 runs each;
        with 50 ms commits it had cost more).
        """
        try:
            if self._point_reader is None:
                uri = (self.data_dir / DB_NAME).resolve().as_uri() + "?mode=ro"
                reader = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
                reader.row_factory = sqlite3.Row
                self._point_reader = reader
            return self._point_reader.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error:
            return None

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
        async with self._write_lock:
            try:
                results, new = await self._db._execute(
                    self._write_tracker_rows, self._db._conn, fetches, receipts, not self.webhook_urls
                )
                if self.webhook_urls:
                    await self._tracker_webhooks(self._db, fetches, new)
                    await self._db.commit()
            except (sqlite3.Error, asyncio.CancelledError) as exc:
                if self._db.in_transaction:
                    await self._db.rollback()
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
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
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
        db: aiosqlite.Connection, batch_id: int, replies: Iterable[tuple[str, bytes]], now: float
    ) -> None:
        await db.executemany(
            "INSERT OR REPLACE INTO anchor_replies (batch_id, calendar, at, reply) VALUES (?, ?, ?, ?)",
            [(batch_id, calendar, now, reply) for calendar, reply in replies],
        )

    async def _anchor_event(self, db: aiosqlite.Connection, event: str, batch_id: int, now: float) -> None:
        row = await (
            await db.execute("SELECT root, leaves, bitcoin_height FROM anchor_batches WHERE id = ?", (batch_id,))
        ).fetchone()
        payload = {"batch": batch_id, "root": row[0].hex(), "leaves": row[1]}
        if event == "confirmed":
            payload["bitcoin_height"] = row[2]
        await self.enqueue_event(db, event, payload, now)

    async def anchor_batches(self, states: Iterable[str], due_before: float | None = None) -> list[aiosqlite.Row]:
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
            if row is not None and (row[0], state) == ("submitting", "pending"):
                await self._anchor_event(db, "anchored", batch_id, now)
            elif row is not None and row[0] != state == "confirmed":
                await self._anchor_event(db, "confirmed", batch_id, now)

    async def anchor_leaf(self, digest: str) -> aiosqlite.Row:
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
