"""Group commit of the tracker's writes: fetches and receipts.

Each fetch and each acknowledgment is a durable write (fsync'd WAL). One commit
per request would cap the tracker at the disk's fsync rate, so requests that
arrive together share one transaction: a single task takes everything queued,
writes it in one commit, then answers each request. A request is answered only
after the commit that holds its write, so a confirmation page never shows a
receipt that is not on disk.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from relay.errors import StoreError
from relay.store import FetchWrite, ReceiptWrite, Store

log = logging.getLogger("estampille.tracker")

MAX_BATCH = 512  # events per transaction; bounds one commit's latency


@dataclass(frozen=True)
class Acknowledgment:
    """The delivery's acknowledgment time, and whether this request recorded it."""

    at: float
    first: bool


class Recorder:
    """Queues tracker writes and commits them in groups from one background task."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: list[tuple[FetchWrite | ReceiptWrite, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="tracker-recorder")

    async def stop(self) -> None:
        """Commit what is queued, then stop (never cancelled mid-commit: waiters would hang)."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None

    async def record_fetch(self, fetch: FetchWrite) -> None:
        await self._submit(fetch)

    async def record_receipt(self, receipt: ReceiptWrite) -> Acknowledgment:
        return await self._submit(receipt)

    async def _submit(self, event: FetchWrite | ReceiptWrite) -> Acknowledgment | None:
        if self._task is None or self._stopping:
            raise StoreError("the tracker is stopping; nothing can be recorded")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((event, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._commit_next()
            if self._stopping:
                return

    async def _commit_next(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        fetches = [event for event, _ in batch if isinstance(event, FetchWrite)]
        receipts = [event for event, _ in batch if isinstance(event, ReceiptWrite)]
        try:
            acks = iter(await self._store.write_tracker_events(fetches, receipts))
        except Exception as exc:  # every waiting request must hear of it, then the loop goes on
            log.error("recording %d tracker events failed: %s", len(batch), exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for event, future in batch:
            result = Acknowledgment(*next(acks)) if isinstance(event, ReceiptWrite) else None
            if not future.done():  # the request may have been cancelled (client gone)
                future.set_result(result)
