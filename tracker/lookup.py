"""Group lookup of acknowledgment links: concurrent requests share one query.

Each query is a round trip to the database thread; under load those round trips,
not SQLite, dominate. Requests that ask while a query is in flight wait for the
next one, which asks for all of them at once.
"""

from __future__ import annotations

import asyncio

from relay.store import Store
from relay.store.tracker import AckLink

MAX_BATCH = 500  # token hashes per query (well under SQLite's limit on parameters)


class LinkLookup:
    """Finds links by token hash, many per query."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: dict[str, list[asyncio.Future]] = {}
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, while _task runs

    async def find(self, token_sha256: str) -> AckLink | None:
        """The link of this token hash, or None when no token has it."""
        if self._task is None:
            # Asked once a batch: asyncio.get_running_loop() is a getpid() system call (Python 3.11).
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._drain(), name="tracker-link-lookup")
        future = self._loop.create_future()
        self._waiting.setdefault(token_sha256, []).append(future)
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                hashes = list(self._waiting)[:MAX_BATCH]
                batch = {h: self._waiting.pop(h) for h in hashes}
                try:
                    rows = await self._store.find_ack_links(hashes)
                except Exception as exc:  # every waiting request must hear of it
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for token_sha256, futures in batch.items():
                    for future in futures:
                        if not future.done():  # the request may have been cancelled
                            future.set_result(rows.get(token_sha256))
        finally:
            self._task = None
