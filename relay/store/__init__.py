"""The store: one SQLite database and a content-addressed directory of message bytes.

No other package imports sqlite3 or aiosqlite or writes SQL. The modules:
- ``engine``: the connection, the write thread and the group commit; the read connections;
- ``schema``: the tables and their migrations;
- one module per subsystem (``deliveries``, ``evidence``, ``anchoring``, ``tracker``,
  ``webhooks``, ``retention``, ``metrics``, ``blobs``), each with its queries, the typed
  records they return, and a Protocol that a second backend implements;
- ``states``: the states of a delivery and of an anchoring batch.

Durability rules:
- message bytes are written to a temporary file, fsync'd, renamed to their SHA-256 and the
  directory fsync'd before any row names them (``durable``);
- all writes go through one connection on one thread, in transactions (``BEGIN IMMEDIATE``),
  so a caller that got back from a write has committed;
- an evidence record and its anchoring leaf are inserted in the same transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from relay.store.anchoring import ANCHOR_CHUNK_BYTES, ANCHOR_NONCE_BYTES, AnchorStore, NewAnchorBatch, SqliteAnchoring
from relay.store.blobs import BLOB_DIR, INLINE_MAX, MessageBytes, MessageFiles
from relay.store.deliveries import DeliveryQueue, SqliteDeliveries
from relay.store.engine import DB_NAME, AsyncConnection, Database
from relay.store.evidence import EvidenceStore, SqliteEvidence
from relay.store.metrics import MetricsSource, OperationsFigures, SqliteMetrics
from relay.store.retention import Retention, SqliteRetention
from relay.store.schema import MIGRATIONS, SCHEMA_VERSION
from relay.store.tracker import FetchWrite, PersonalData, ReceiptWrite, SqliteTracker, TrackerStore
from relay.store.webhooks import WEBHOOK_EVENTS, SqliteWebhooks, WebhookQueue

# What a backend provides, one Protocol per subsystem (tests/unit/test_store_interfaces.py).
INTERFACES = (MessageBytes, DeliveryQueue, EvidenceStore, AnchorStore, TrackerStore, WebhookQueue, Retention,
              MetricsSource)

__all__ = [
    "INTERFACES",
    "ANCHOR_CHUNK_BYTES", "ANCHOR_NONCE_BYTES", "BLOB_DIR", "DB_NAME", "INLINE_MAX", "MIGRATIONS", "SCHEMA_VERSION",
    "WEBHOOK_EVENTS", "FetchWrite", "NewAnchorBatch", "OperationsFigures", "PersonalData", "ReceiptWrite", "Store",
]

T = TypeVar("T")


class Store(
    MessageFiles, SqliteDeliveries, SqliteEvidence, SqliteAnchoring, SqliteTracker, SqliteWebhooks,
    SqliteRetention, SqliteMetrics,
):
    """The database and the message directory under one data directory: every subsystem's
    queries (their Protocols are in their modules) over one :class:`Database`."""

    def __init__(self, data_dir: Path, db: Database) -> None:
        self.data_dir = data_dir
        self.blob_dir = data_dir / BLOB_DIR
        self.db = db
        # Set by the service from webhooks.urls; enqueue_event queues one row per URL.
        self.webhook_urls: tuple[str, ...] = ()

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

    async def write_fn(self, fn: Callable[[sqlite3.Connection], T], *, urgent: bool = True) -> T:
        """Run the plain function ``fn(connection)`` on the write thread, in the group commit."""
        return await self.db.write_fn(fn, urgent=urgent)

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query (health checks, tests, benches); subsystems return records."""
        return await self.db.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """The first row, or None (for queries that select at most a few rows)."""
        return await self.db.fetchone(sql, params)
