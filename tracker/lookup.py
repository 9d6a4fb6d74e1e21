"""Group lookup of acknowledgment links: concurrent requests share one query (relay.batching).

Each query is a round trip to the database thread; under load those round trips,
not SQLite, dominate. Requests that ask while a query is in flight wait for the
next one, which asks for all of them at once.
"""

from __future__ import annotations

from relay.batching import Batcher
from relay.store import Store
from relay.store.tracker import AckLink

MAX_BATCH = 500  # token hashes per query (well under SQLite's limit on parameters)


class LinkLookup:
    """Finds links by token hash, many per query."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._batcher: Batcher[str, AckLink | None] = Batcher(
            self._find_many, name="tracker-link-lookup", max_items=MAX_BATCH)

    async def find(self, token_sha256: str) -> AckLink | None:
        """The link of this token hash, or None when no token has it."""
        return await self._batcher.submit(token_sha256)

    async def _find_many(self, hashes: list[str]) -> list[AckLink | None]:
        rows = await self._store.find_ack_links(list(dict.fromkeys(hashes)))
        return [rows.get(token_sha256) for token_sha256 in hashes]
