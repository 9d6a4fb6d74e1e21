"""One batching queue: what callers ask while a batch is in flight goes together in the next.

Each call of the batch function is a trip (to a thread, to the database) whose cost grows
little with the number of items, so under load callers share trips instead of queueing for
one each. The certify thread (relay.outbound.deliver), the lookup of acknowledgment links
and the tracker's writes (tracker) use it; the store's group commit has its own writer.

- A batch takes at most ``max_items`` items, and stops growing once their ``weight``
  reaches ``max_weight`` (the octets of the messages to certify, say).
- An item that is not ``urgent`` may wait up to ``linger`` seconds for others to share
  its batch (sooner once ``flush_count`` wait, or along with an urgent one).
- The batch function returns one outcome per item, a result or an exception: each caller
  gets its own. If it raises, every caller of that batch gets the exception.
- A caller that gives up (its future cancelled) is skipped, not computed.
- An item :meth:`Batcher.put` queues has no future (nobody waits for it): its outcome is
  the batch function's business (the tracker's page fetches).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item, as R is a result
R = TypeVar("R")


class Batcher(Generic[I, R]):
    """Runs ``run(items)`` for queued items, one batch at a time, from one background task."""

    def __init__(
        self,
        run: Callable[[list[I]], Awaitable[Sequence[R | BaseException]]],
        *,
        name: str,
        max_items: int,
        weight: Callable[[I], int] | None = None,
        max_weight: int = 0,
        linger: float = 0.0,
        flush_count: int = 0,
    ) -> None:
        self._run = run
        self._name = name
        self.max_items = max_items
        self._weight = weight
        self._max_weight = max_weight
        self._linger = linger
        self._flush_count = flush_count or max_items
        self._queue: deque[tuple[I, asyncio.Future[R] | None, bool]] = deque()  # item, its future, urgent
        self._urgent = 0  # urgent items queued
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, while _task runs
        self._flushing = False

    @property
    def pending(self) -> int:
        """Items queued, not counting the batch being run."""
        return len(self._queue)

    def submit(self, item: I, *, urgent: bool = True) -> asyncio.Future[R]:
        """Queue ``item``; the future gets its outcome once its batch has run."""
        if self._loop is None:
            # Asked once a busy spell: asyncio.get_running_loop() is a getpid() system call (Python 3.11).
            self._loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = self._loop.create_future()
        self._queue_item(item, future, urgent)
        return future

    def put(self, item: I, *, urgent: bool = False) -> None:
        """Queue ``item`` with no future: nobody waits for its outcome."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._queue_item(item, None, urgent)

    def _queue_item(self, item: I, future: asyncio.Future[R] | None, urgent: bool) -> None:
        assert self._loop is not None
        self._queue.append((item, future, urgent))
        self._urgent += urgent
        if urgent or len(self._queue) >= self._flush_count or not self._linger:
            self._start()
        elif self._timer is None and self._task is None:
            self._timer = self._loop.call_later(self._linger, self._start)

    async def flush(self) -> None:
        """Run everything queued now, lingering items included, and wait for it."""
        self._flushing = True
        try:
            while self._queue or self._task is not None:
                self._start()
                assert self._task is not None
                await asyncio.shield(self._task)
        finally:
            self._flushing = False

    def close(self) -> None:
        """Stop at once: a batch being run is cancelled (its callers' futures are cancelled)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None and self._queue:
            assert self._loop is not None
            self._task = self._loop.create_task(self._drain(), name=self._name)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if batch:
                    await self._run_one(batch)
                if not (self._urgent or self._flushing or len(self._queue) >= self._flush_count or not self._linger):
                    break  # lingering items wait for their timer, and share a batch
        finally:
            self._task = None
            if self._queue and self._timer is None and self._loop is not None:
                self._timer = self._loop.call_later(self._linger, self._start)

    def _take(self) -> list[tuple[I, asyncio.Future[R] | None]]:
        batch: list[tuple[I, asyncio.Future[R] | None]] = []
        weight = 0
        while self._queue and len(batch) < self.max_items and (not batch or weight < self._max_weight or
                                                                self._weight is None):
            item, future, urgent = self._queue.popleft()
            self._urgent -= urgent
            if future is None or not future.done():  # else its caller gave up
                batch.append((item, future))
                weight += self._weight(item) if self._weight is not None else 0
        return batch

    async def _run_one(self, batch: list[tuple[I, asyncio.Future[R] | None]]) -> None:
        try:
            outcomes: Sequence[R | BaseException] = await self._run([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every caller of the batch hears of it
            outcomes = [exc] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future is None or future.done():  # nobody waits, or its caller gave up meanwhile
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
