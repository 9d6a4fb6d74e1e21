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

import asyncio
import logging
from dataclasses import dataclass

from relay.errors import StoreError
from relay.store import FetchWrite, ReceiptWrite, Store

log = logging.getLogger("estampille.tracker")

MAX_BATCH = 512  # events per transaction; bounds one commit's latency
# Longest a fetch waits in memory before its commit starts. Each fetch dirties about 4 random
# index pages (digests, delivery ids), so larger commits share pages and fsyncs: at 3,500 fetches/s,
# 50 ms instead of 10 took the write's CPU (rows and commit) from about 68 to 50 us a fetch, and
# 100 ms (with FETCH_FLUSH_COUNT 512) instead of 50 (256) from about 43 to 20-26 us at 5,000/s.
FETCH_FLUSH_SECONDS = 0.1
FETCH_FLUSH_COUNT = 512  # fetches waiting that start a commit at once (MAX_BATCH: one commit's worth)
MAX_PENDING_FETCHES = 4096  # bounds memory if the disk stalls; more requests wait for room


@dataclass(frozen=True)
class Acknowledgment:
    """The delivery's acknowledgment time, and whether this request recorded it."""

    at: float
    first: bool


class Recorder:
    """Queues tracker writes and commits them in groups from one background task."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._receipts: list[tuple[ReceiptWrite, asyncio.Future]] = []
        self._fetches: list[FetchWrite] = []
        self._retries: list[FetchWrite] = []  # fetches of a failed commit, tried once more
        self._room_waiters: list[asyncio.Future] = []  # requests waiting for the next commit
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="tracker-recorder")

    async def stop(self) -> None:
        """Commit everything queued, then stop (never cancelled mid-commit: waiters would hang)."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None

    async def record_fetch(self, fetch: FetchWrite) -> None:
        """Queue a fetch; it is committed within FETCH_FLUSH_SECONDS (see the module docstring)."""
        self._check_running()
        while len(self._fetches) + len(self._retries) >= MAX_PENDING_FETCHES:
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            self._wake.set()  # a full queue is written at once
            await waiter  # raises if that commit failed: the store is in trouble
            self._check_running()
        self._fetches.append(fetch)
        if len(self._fetches) >= FETCH_FLUSH_COUNT:
            self._wake.set()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FETCH_FLUSH_SECONDS, self._flush_due)

    async def record_receipt(self, receipt: ReceiptWrite) -> Acknowledgment:
        """Record a receipt; returns once it is committed (durable)."""
        self._check_running()
        future = asyncio.get_running_loop().create_future()
        self._receipts.append((receipt, future))
        self._wake.set()
        return await future

    def _flush_due(self) -> None:
        self._timer = None
        self._wake.set()

    def _check_running(self) -> None:
        if self._task is None or self._stopping:
            raise StoreError("the tracker is stopping; nothing can be recorded")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._receipts or self._fetches or self._retries:
                await self._commit_next()
                if not (self._receipts or self._stopping or len(self._fetches) >= FETCH_FLUSH_COUNT):
                    break  # fetches queued meanwhile wait for their timer, and share a commit
            if self._stopping and not (self._receipts or self._fetches or self._retries):
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                return

    async def _commit_next(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        receipts, self._receipts = self._receipts[:MAX_BATCH], self._receipts[MAX_BATCH:]
        room = MAX_BATCH - len(receipts)
        retries, self._retries = self._retries[:room], self._retries[room:]
        room -= len(retries)
        fetches, self._fetches = self._fetches[:room], self._fetches[room:]
        if self._fetches and self._timer is None:  # what did not fit goes in the next commit
            self._timer = asyncio.get_running_loop().call_later(FETCH_FLUSH_SECONDS, self._flush_due)
        error: Exception | None = None
        try:
            acks = iter(await self._store.write_tracker_events([*retries, *fetches], [r for r, _ in receipts]))
        except Exception as exc:  # noqa: BLE001 - every waiting request must hear of it, then the loop goes on
            error = exc
            log.error("recording %d tracker events failed: %s", len(receipts) + len(retries) + len(fetches), exc)
            if retries:
                log.error("%d page fetches not recorded (their second attempt failed)", len(retries))
            self._retries[:0] = fetches
            if self._retries and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(FETCH_FLUSH_SECONDS, self._flush_due)
        waiters, self._room_waiters = self._room_waiters, []
        for receipt, future in [*receipts, *((None, w) for w in waiters)]:
            if future.done():  # the request may have been cancelled (client gone)
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None if receipt is None else Acknowledgment(*next(acks)))
