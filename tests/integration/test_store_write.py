"""Store.write: group commit, and one writer's failure is its own."""

from __future__ import annotations

import asyncio

import pytest

from relay.store import Store


async def test_concurrent_writers_share_commits_and_fail_alone(tmp_path):
    store = await Store.open(tmp_path)
    try:
        async def insert(db, n: int) -> int:
            await db.execute("INSERT INTO personal (salt, ip, created_at) VALUES (?, ?, ?)", (b"s", f"ip{n}", 0.0))
            if n == 3:
                raise ValueError("writer 3 fails")
            return n

        results = await asyncio.gather(*(store.write(lambda db, n=n: insert(db, n)) for n in range(6)),
                                       return_exceptions=True)
        assert [r if isinstance(r, int) else type(r) for r in results] == [0, 1, 2, ValueError, 4, 5]
        rows = await store.fetchall("SELECT ip FROM personal ORDER BY id")
        assert [r["ip"] for r in rows] == ["ip0", "ip1", "ip2", "ip4", "ip5"]
        assert await store.write(lambda db: insert(db, 9)) == 9
    finally:
        await store.close()


async def test_a_writer_that_fails_alone_raises_its_own_error(tmp_path):
    store = await Store.open(tmp_path)
    try:
        async def broken(db):
            await db.execute("INSERT INTO no_such_table VALUES (1)")

        with pytest.raises(Exception, match="no_such_table"):
            await store.write(broken)
        assert await store.write(lambda db: asyncio.sleep(0, result="still usable")) == "still usable"
    finally:
        await store.close()
