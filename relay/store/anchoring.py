"""Anchoring: the leaves (one per evidence record) waiting for a batch, the batches, their
Merkle trees in chunks and the calendars' replies (relay.anchor.worker)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from relay.errors import ConflictError, NotFoundError, StoreError
from relay.store.engine import Database, Executor, columns
from relay.store.states import BatchState

ANCHOR_CHUNK_BYTES = 32 * 1024  # tree nodes per anchor_nodes row: 1024 hashes
ANCHOR_NONCE_BYTES = 16


def _with_state(row: Any, index: int) -> list[Any]:
    """The values of ``row``, its batch state column (at ``index``, NULL if none) as a BatchState."""
    values = list(row)
    if values[index] is not None:
        values[index] = BatchState(values[index])
    return values


@dataclass(frozen=True)
class NewAnchorBatch:
    """A batch to store (relay.anchor.worker): the root, the leaves in tree order, the tree, the replies."""

    root: bytes
    created_at: float
    state: BatchState  # submitting or pending
    next_attempt_at: float
    timestamp: bytes | None  # the root's merged calendar replies, serialized
    rowids: list[int]  # the leaves' row ids (their records' ids), in tree order
    nonces: bytes  # ANCHOR_NONCE_BYTES per leaf, in tree order
    levels: tuple[bytes, ...]  # relay.anchor.merkle.Tree.levels
    replies: tuple[tuple[str, bytes], ...]  # (calendar URL, its reply re-serialized)


@dataclass(frozen=True)
class AnchorBatch:
    """A stored batch (a row of anchor_batches)."""

    id: int
    root: bytes
    created_at: float
    leaves: int
    state: BatchState
    attempts: int
    next_attempt_at: float
    timestamp: bytes | None  # the root's merged calendar replies, serialized
    bitcoin_height: int | None
    block_time: int | None
    confirmed_at: float | None
    resubmitted_at: float | None


@dataclass(frozen=True)
class AnchorLeaf:
    """One record's leaf with its batch: what exporting its proof needs (batch fields None if unbatched)."""

    digest: str
    batch_id: int | None
    nonce: bytes | None
    position: int | None
    root: bytes | None
    leaves: int | None
    state: BatchState | None
    timestamp: bytes | None


@dataclass(frozen=True)
class AnchorSummary:
    """Leaves waiting for a batch, and the confirmed batches, for `estampille anchor --status`."""

    unbatched: int
    oldest_queued_at: float | None
    confirmed_batches: int
    confirmed_leaves: int
    last_height: int | None


class AnchorStore(Protocol):
    """What relay.anchor.worker reads and writes."""

    async def unbatched_leaves(self, limit: int) -> list[tuple[int, str]]: ...
    async def save_anchor_batch(self, batch: NewAnchorBatch) -> int: ...
    async def anchor_batches(self, states: Iterable[BatchState],
                             due_before: float | None = None) -> list[AnchorBatch]: ...
    async def anchor_reply_calendars(self, batch_id: int) -> set[str]: ...
    async def update_anchor_batch(self, batch_id: int, *, now: float, timestamp: bytes | None, state: BatchState,
                                  next_attempt_at: float, replies: Iterable[tuple[str, bytes]] = (),
                                  attempted: bool = False, bitcoin_height: int | None = None,
                                  block_time: int | None = None, resubmitted: bool = False) -> None: ...
    async def anchor_leaf(self, digest: str) -> AnchorLeaf: ...
    async def anchor_nodes(self, batch_id: int, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]: ...
    async def anchor_summary(self) -> AnchorSummary: ...


class SqliteAnchoring:
    """:class:`AnchorStore` on SQLite."""

    db: Database
    if TYPE_CHECKING:  # webhooks.SqliteWebhooks's

        async def enqueue_event(self, db: Executor, event: str, payload: dict[str, Any], now: float) -> None: ...

    async def unbatched_leaves(self, limit: int) -> list[tuple[int, str]]:
        """(row id, digest) of up to ``limit`` leaves not yet in a batch, oldest first."""
        rows = await self.db.fetchall(
            "SELECT record_id, digest FROM anchor_leaves WHERE batch_id IS NULL ORDER BY queued_at LIMIT ?", (limit,)
        )
        return [(row[0], row[1]) for row in rows]

    async def save_anchor_batch(self, batch: NewAnchorBatch) -> int:
        """Store a batch, its leaves' nonces and positions, its tree and its calendar replies, in one transaction.

        Returns the batch id. Webhook event 'anchored' is queued when the batch is pending.
        """
        async with self.db.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO anchor_batches (root, created_at, leaves, state, attempts, next_attempt_at, timestamp)"
                " VALUES (?, ?, ?, ?, 1, ?, ?)",
                (batch.root, batch.created_at, len(batch.rowids), batch.state, batch.next_attempt_at, batch.timestamp),
            )
            batch_id = cursor.lastrowid
            assert batch_id is not None  # an INSERT into a rowid table
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
            if batch.state == BatchState.PENDING:
                await self._anchor_event(db, "anchored", batch_id, batch.created_at)
        return batch_id

    @staticmethod
    async def _insert_anchor_replies(
        db: Executor, batch_id: int, replies: Iterable[tuple[str, bytes]], now: float
    ) -> None:
        await db.executemany(
            "INSERT OR REPLACE INTO anchor_replies (batch_id, calendar, at, reply) VALUES (?, ?, ?, ?)",
            [(batch_id, calendar, now, reply) for calendar, reply in replies],
        )

    async def _anchor_event(self, db: Executor, event: str, batch_id: int, now: float) -> None:
        row = await (
            await db.execute("SELECT root, leaves, bitcoin_height FROM anchor_batches WHERE id = ?", (batch_id,))
        ).fetchone()
        payload = {"batch": batch_id, "root": row[0].hex(), "leaves": row[1]}
        if event == "confirmed":
            payload["bitcoin_height"] = row[2]
        await self.enqueue_event(db, event, payload, now)

    async def anchor_batches(self, states: Iterable[BatchState], due_before: float | None = None) -> list[AnchorBatch]:
        """Batches in ``states`` (optionally only those due before a time), oldest first."""
        states = tuple(states)
        marks = ", ".join("?" for _ in states)
        sql = f"SELECT {columns(AnchorBatch)} FROM anchor_batches WHERE state IN ({marks})"
        params: list[Any] = list(states)
        if due_before is not None:
            sql += " AND next_attempt_at <= ?"
            params.append(due_before)
        rows = await self.db.fetchall(sql + " ORDER BY id", params)
        return [AnchorBatch(*_with_state(row, 4)) for row in rows]

    async def anchor_reply_calendars(self, batch_id: int) -> set[str]:
        """The calendar URLs that accepted a batch's root."""
        rows = await self.db.fetchall("SELECT calendar FROM anchor_replies WHERE batch_id = ?", (batch_id,))
        return {row[0] for row in rows}

    async def update_anchor_batch(
        self,
        batch_id: int,
        *,
        now: float,
        timestamp: bytes | None,
        state: BatchState,
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
        async with self.db.transaction() as db:
            row = await (await db.execute("SELECT state FROM anchor_batches WHERE id = ?", (batch_id,))).fetchone()
            if row is not None and row[0] == BatchState.CONFIRMED and state != BatchState.CONFIRMED:
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
            if row is not None and (row[0], state) == (BatchState.SUBMITTING, BatchState.PENDING):
                await self._anchor_event(db, "anchored", batch_id, now)
            elif row is not None and row[0] != state == BatchState.CONFIRMED:
                await self._anchor_event(db, "confirmed", batch_id, now)

    async def anchor_leaf(self, digest: str) -> AnchorLeaf:
        """One leaf joined with its batch: what exporting its proof needs (NotFoundError if unknown)."""
        row = await self.db.fetchone(
            "SELECT l.digest, l.batch_id, l.nonce, l.position, b.root, b.leaves, b.state, b.timestamp"
            " FROM records r JOIN anchor_leaves l ON l.record_id = r.id LEFT JOIN anchor_batches b ON b.id = l.batch_id"
            " WHERE r.digest = ?",
            (digest,),
        )
        if row is None:
            raise NotFoundError(f"no evidence record with digest {digest} is queued for anchoring")
        return AnchorLeaf(*_with_state(row, 6))

    async def anchor_nodes(self, batch_id: int, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Nodes (level, index) of a batch's tree, read from the chunks that hold them."""
        wanted = list(wanted)
        per_chunk = ANCHOR_CHUNK_BYTES // 32
        chunks: dict[tuple[int, int], bytes] = {}
        for level, chunk in {(level, index // per_chunk) for level, index in wanted}:
            row = await self.db.fetchone(
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

    async def anchor_summary(self) -> AnchorSummary:
        """Unbatched leaves (count, oldest queued time) and confirmed batches (count, leaves, last height)."""
        leaves = await self.db.fetchone("SELECT COUNT(*), MIN(queued_at) FROM anchor_leaves WHERE batch_id IS NULL")
        confirmed = await self.db.fetchone(
            "SELECT COUNT(*), COALESCE(SUM(leaves), 0), MAX(bitcoin_height) FROM anchor_batches WHERE state = ?",
            (BatchState.CONFIRMED,),
        )
        assert leaves is not None and confirmed is not None  # aggregates always give one row
        return AnchorSummary(*leaves, *confirmed)
