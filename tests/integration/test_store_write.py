"""Store.write: group commit, and one writer's failure is its own."""

from __future__ import annotations

import asyncio

import pytest

from relay.errors import StoreError
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


async def test_readers_and_recorded_writers_in_one_batch(tmp_path):
    store = await Store.open(tmp_path)
    try:
        async def record(db):
            await db.execute("INSERT INTO personal (salt, ip, created_at) VALUES (?, ?, ?)", (b"s", "recorded", 0.0))

        async def read_back(db):
            await db.execute("INSERT INTO personal (salt, ip, created_at) VALUES (?, ?, ?)", (b"s", "reader", 0.0))
            cursor = await db.execute("SELECT COUNT(*) FROM personal WHERE ip = 'reader'")
            return (await cursor.fetchone())[0]

        async def misuse(db):
            cursor = await db.execute("SELECT 1")
            return cursor.rowcount

        results = await asyncio.gather(store.write(record), store.write(read_back, reads=True), store.write(misuse),
                                       return_exceptions=True)
        assert results[0] is None and results[1] == 1
        assert isinstance(results[2], StoreError) and "reads=True" in str(results[2])
        rows = await store.fetchall("SELECT ip FROM personal ORDER BY ip")
        assert [r["ip"] for r in rows] == ["reader", "recorded"]
    finally:
        await store.close()


async def _commits_of(store: Store, monkeypatch, writes) -> int:
    """How many transactions the store commits for ``writes``: (urgent, ...) started one loop
    turn apart, as deliveries finishing one after another do."""
    from relay.store import engine

    commits = []
    apply = engine._apply_writers
    monkeypatch.setattr(engine, "_apply_writers", lambda *a: commits.append(1) or apply(*a))

    async def insert(db, n: int) -> None:
        await db.execute("INSERT INTO personal (salt, ip, created_at) VALUES (?, ?, ?)", (b"s", f"ip{n}", 0.0))

    tasks = []
    for n, urgent in enumerate(writes):
        tasks.append(asyncio.create_task(store.write(lambda db, n=n: insert(db, n), urgent=urgent)))
        for _ in range(3):
            await asyncio.sleep(0)  # the flusher is running by now
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert len(await store.fetchall("SELECT id FROM personal")) == len(writes)
    return len(commits)


async def test_writers_that_are_not_urgent_wait_a_moment_to_share_one_commit(tmp_path, monkeypatch):
    store = await Store.open(tmp_path)
    try:
        assert await _commits_of(store, monkeypatch, [False, False, False]) == 1
    finally:
        await store.close()


async def test_an_urgent_writer_commits_at_once_with_those_waiting(tmp_path, monkeypatch):
    """A client waits for its 250: the linger ends when it arrives (here the linger is a minute)."""
    monkeypatch.setattr("relay.store.engine.GROUP_LINGER", 60.0)
    store = await Store.open(tmp_path)
    try:
        assert await _commits_of(store, monkeypatch, [False, True]) == 1
    finally:
        await store.close()


async def test_reads_see_only_committed_rows_and_do_not_wait_for_an_open_transaction(tmp_path):
    store = await Store.open(tmp_path)
    try:
        async with store.transaction() as db:
            await db.execute("INSERT INTO personal (salt, ip, created_at) VALUES (?, ?, ?)", (b"s", "pending", 0.0))
            # A read (the admin pages, the API) while the transaction is open, between its statements.
            rows = await asyncio.wait_for(store.fetchall("SELECT ip FROM personal"), 5)
            assert rows == []
        assert [r["ip"] for r in await store.fetchall("SELECT ip FROM personal")] == ["pending"]
        with pytest.raises(RuntimeError):
            async with store.transaction() as db:
                await db.execute("INSERT INTO personal (salt, ip, created_at) VALUES (?, ?, ?)", (b"s", "rolled", 0.0))
                assert len(await store.fetchall("SELECT ip FROM personal")) == 1
                raise RuntimeError("the transaction fails")
        assert [r["ip"] for r in await store.fetchall("SELECT ip FROM personal")] == ["pending"]
    finally:
        await store.close()


async def test_plain_function_writers_run_on_the_write_thread_and_fail_alone(tmp_path):
    import threading

    store = await Store.open(tmp_path)
    try:
        threads = set()

        def insert(conn, n: int) -> int:
            threads.add(threading.current_thread().name)
            conn.execute("INSERT INTO personal (salt, ip, created_at) VALUES (?, ?, ?)", (b"s", f"ip{n}", 0.0))
            if n == 1:
                conn.execute("INSERT INTO no_such_table VALUES (1)")
            return conn.execute("SELECT COUNT(*) FROM personal").fetchone()[0]

        results = await asyncio.gather(*(store.write_fn(lambda conn, n=n: insert(conn, n)) for n in range(3)),
                                       return_exceptions=True)
        assert results[0] == 1 and "no_such_table" in str(results[1]) and results[2] == 2
        assert threads == {next(iter(threads))} and threading.current_thread().name not in threads
        rows = await store.fetchall("SELECT ip FROM personal ORDER BY id")
        assert [r["ip"] for r in rows] == ["ip0", "ip2"]
    finally:
        await store.close()
