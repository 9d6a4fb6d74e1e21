"""The schema step that adds the 'attested' state: batches confirmed before attestations were
checked go back to 'attested', everything else and every reference is kept."""

from __future__ import annotations

import sqlite3

import pytest

from relay.store import DB_NAME, MIGRATIONS, Store
from tests.integration.test_store_migrations import _database_at

STEP = next(i for i, script in enumerate(MIGRATIONS) if "anchor_batches_checked" in script)  # renumbered at merges


async def test_confirmed_batches_go_back_to_attested_and_keep_their_leaves(tmp_path):
    db = _database_at(tmp_path / DB_NAME, STEP)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute("INSERT INTO anchor_batches (id, root, created_at, leaves, state, next_attempt_at)"
                   " VALUES (9, x'00', 1.0, 1, 'attested', 0)")
    db.execute("INSERT INTO anchor_batches (id, root, created_at, leaves, state, next_attempt_at, timestamp,"
               " bitcoin_height, block_time, confirmed_at) VALUES"
               " (1, x'01', 1.0, 1, 'confirmed', 0, x'00', 812, NULL, 5.0),"
               " (2, x'02', 2.0, 1, 'confirmed', 0, x'00', 813, 1700000000, 6.0),"
               " (3, x'03', 3.0, 1, 'pending', 0, x'00', NULL, NULL, NULL)")
    db.execute("INSERT INTO records (id, digest, type, body, created_at) VALUES (1, ?, 'receipt', '{}', 1.0)",
               ("0" * 64,))
    db.execute("INSERT INTO anchor_leaves (record_id, digest, queued_at, batch_id, nonce, position)"
               " VALUES (1, ?, 1.0, 2, x'0102', 0)", ("0" * 64,))
    db.close()

    store = await Store.open(tmp_path)
    try:
        rows = await store.anchor_batches(["submitting", "pending", "attested", "confirmed"])
        assert [(r.id, r.state, r.bitcoin_height, r.confirmed_at) for r in rows] == [
            (1, "attested", 812, 5.0), (2, "attested", 813, 6.0), (3, "pending", None, None)]
        assert (await store.anchor_leaf("0" * 64)).batch_id == 2
        async with store.transaction() as db:
            await db.execute("UPDATE anchor_batches SET state = 'confirmed' WHERE id = 1")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            async with store.transaction() as db:
                await db.execute("UPDATE anchor_batches SET state = 'verified' WHERE id = 1")
    finally:
        await store.close()
