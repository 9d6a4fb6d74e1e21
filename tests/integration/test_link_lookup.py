"""Acknowledgment link lookups while the database is being written.

A page fetch must not wait behind a writer's commit (its rows and its fsync), and
must never show an acknowledgment that is not committed yet.
"""

from __future__ import annotations

import asyncio
import hashlib

from relay.store import Store
from tests.support.deliveries import make_delivery

T0 = 1_764_400_000.0


async def test_a_lookup_during_a_write_answers_with_committed_rows_only(tmp_path):
    store = await Store.open(tmp_path)
    try:
        made = await make_delivery(store, now=T0)
        token_sha256 = hashlib.sha256(made.token.encode()).hexdigest()
        async with store.transaction() as db:  # holds the writer, as a group of tracker events does
            await db.execute(
                "INSERT INTO receipts (delivery_id, at, personal_id, record_digest) VALUES (?, ?, NULL, ?)",
                (made.delivery_id, T0 + 60, made.delivery_digest),
            )
            links = await asyncio.wait_for(store.find_ack_links([token_sha256]), 5)
            assert links[token_sha256].delivery_id == made.delivery_id
            assert links[token_sha256].acknowledged_at is None  # not committed yet
        links = await store.find_ack_links([token_sha256])
        assert links[token_sha256].acknowledged_at == T0 + 60
        assert await store.find_ack_links(["0" * 64]) == {}
    finally:
        await store.close()
