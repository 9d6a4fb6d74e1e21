"""Group commit of the tracker's writes: fetches and receipts.

Each acknowledgment is a durable write (fsync'd WAL), and the POST that makes it
is answered only after the commit that holds it: a confirmation page never shows
a receipt that is not on disk. Requests that arrive together share one commit.

A fetch (a GET or HEAD of the page) is not an acknowledgment: its request does not
wait for the disk. Fetches wait in memory and are written together, at most
FETCH_FLUSH_SECONDS after the first of them was queued (sooner when
FETCH_FLUSH_COUNT are waiting, or along with a receipt). So a crash (not a
graceful stop, which writes everything first) loses at most the fetches of the
last FETCH_FLUSH_SECONDS plus one commit. At most MAX_PENDING_FETCHES wait, besides
those of the commit being written: past that, requests wait for room.
A failed commit is retried once for its fetches, then they are dropped (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from relay.batching import Batcher
from relay.errors import StoreError
from relay.store import FetchWrite, ReceiptWrite, Store

log = logging.getLogger("estampille.tracker")

MAX_BATCH = 512  # events per transaction; bounds one commit's latency
# Longest a fetch waits in memory before its commit starts. Each fetch dirties about 4 random
# index pages (digests, delivery ids), so larger commits share pages and fsyncs (docs/performance.md).
FETCH_FLUSH_SECONDS = 0.1
FETCH_FLUSH_COUNT = 512  # fetches waiting that start a commit at once (MAX_BATCH: one commit's worth)
MAX_PENDING_FETCHES = 4096  # bounds memory if the disk stalls; more requests wait for room


@dataclass(frozen=True)
class Acknowledgment:
    """The delivery's acknowledgment time, and whether this request recorded it."""

    at: float
    first: bool


@dataclass(frozen=True)
class _Fetch:
    write: FetchWrite
    retry: bool  # its first commit failed: this is its last try


Event = ReceiptWrite | _Fetch


class Recorder:
    """Queues tracker writes and commits them in groups (relay.batching)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._batcher: Batcher[Event, Acknowledgment | None] = Batcher(
            self._commit, name="tracker-recorder", max_items=MAX_BATCH, linger=FETCH_FLUSH_SECONDS,
            flush_count=FETCH_FLUSH_COUNT,
        )
        self._running = False
        self._failed: Exception | None = None  # the last commit's error, for requests waiting for room

    def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        """Commit everything queued, then stop (never cancelled mid-commit: waiters would hang)."""
        if not self._running:
            return
        self._running = False
        await self._batcher.flush()

    async def record_fetch(self, fetch: FetchWrite) -> None:
        """Queue a fetch; it is committed within FETCH_FLUSH_SECONDS (see the module docstring)."""
        self._check_running()
        while self._batcher.pending >= MAX_PENDING_FETCHES:
            await self._batcher.flush()  # a full queue is written at once
            if self._failed is not None:
                raise self._failed  # the store is in trouble
            self._check_running()
        self._batcher.put(_Fetch(fetch, retry=False))

    async def record_receipt(self, receipt: ReceiptWrite) -> Acknowledgment:
        """Record a receipt; returns once it is committed (durable)."""
        self._check_running()
        acknowledgment = await self._batcher.submit(receipt)
        assert acknowledgment is not None
        return acknowledgment

    def _check_running(self) -> None:
        if not self._running:
            raise StoreError("the tracker is stopping; nothing can be recorded")

    async def _commit(self, events: list[Event]) -> Sequence[Acknowledgment | None | BaseException]:
        """One transaction for the batch; a fetch's outcome is None even when it failed (nobody
        waits for it): it is queued once more, or dropped and logged."""
        fetches = [e for e in events if isinstance(e, _Fetch)]
        receipts = [e for e in events if isinstance(e, ReceiptWrite)]
        try:
            acks = iter(await self._store.write_tracker_events([f.write for f in fetches], receipts))
        except Exception as exc:  # noqa: BLE001 - every waiting request must hear of it, then the loop goes on
            self._failed = exc
            log.error("recording %d tracker events failed: %s", len(events), exc)
            dropped = sum(f.retry for f in fetches)
            if dropped:
                log.error("%d page fetches not recorded (their second attempt failed)", dropped)
            for fetch in fetches:
                if not fetch.retry:
                    self._batcher.put(_Fetch(fetch.write, retry=True))
            return [None if isinstance(e, _Fetch) else exc for e in events]
        self._failed = None
        return [None if isinstance(e, _Fetch) else Acknowledgment(*next(acks)) for e in events]
