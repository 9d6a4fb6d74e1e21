"""The SQLite database: one write thread that owns the writer connection, the group commit,
and the read-only connections.

All writes run on one thread this module owns, with the standard library's sqlite3 (the
pattern of Datasette's ``execute_write_fn``): a writer is a plain synchronous function of the
connection. Writers that arrive while a commit is in progress share the next transaction,
each in its own SAVEPOINT, and each gets its answer only after the shared COMMIT (one fsync
for all of them). Reads go through a read-only connection of their own (aiosqlite, public
API only), so they never see an open transaction's rows nor wait behind the writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite

from relay.errors import StoreError
from relay.store import schema

T = TypeVar("T")
log = logging.getLogger("estampille.store")

DB_NAME = "estampille.sqlite3"
SQL_CHUNK = 500  # values per IN (...) query, well under SQLite's variable limit
PAGE_CACHE_KIB = 32 * 1024  # the writer connection's page cache (see Database.open)
# A batch of writers none of whom is urgent (deliveries recording what they did) waits this long
# for company unless it already has GROUP_TARGET writers: fewer, larger commits, one fsync each.
# Each commit rewrites every B-tree page it touches, so fewer, fuller commits write less: on the
# relay bench, 10 ms and 16 (with upstream.concurrency 32, now 64, to cover the wait) gave 10.5
# writers a commit instead of 6.0, 15 % fewer octets written and more deliveries per second
# than 3 ms and 8. Urgent writers (a client waiting for its 250, the default) never wait.
GROUP_TARGET = 16
GROUP_LINGER = 0.010

class Executor(Protocol):
    """What a writer's statements go through: :class:`AsyncConnection` in a transaction, or
    the recorder of a batched :meth:`Database.write`."""

    async def execute(self, sql: str, parameters: Iterable[Any] = ..., /) -> Any: ...

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Iterable[Any]], /) -> Any: ...


Writer = Callable[[sqlite3.Connection], Any]  # a plain function run on the write thread


def columns(record: type, alias: str = "") -> str:
    """The SELECT list of a record dataclass whose fields are named after their columns, in order."""
    return ", ".join(f"{alias}{field.name}" for field in fields(record))


def _connect_writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    # Temporary data (statement journals, which foreign keys make SQLite keep for each
    # statement) stays in memory rather than temporary files: for the 10^6 UPDATEs of an
    # anchoring batch, system CPU went from 8.5 s to 1.4 s.
    conn.execute("PRAGMA temp_store=MEMORY")
    # The tracker inserts each page fetch into indexes keyed by random digests: with SQLite's
    # default 2 MB page cache those inserts and the link lookups kept reading pages back from
    # the OS. An upper bound, used only as the database grows.
    conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
    # Deleted rows are overwritten, not just unlinked: purged IP addresses and user agents must
    # not linger in free pages (privacy.retention_days).
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def _apply_writers(
    conn: sqlite3.Connection, writers: list[Writer], begin: bool
) -> list[tuple[Any, BaseException | None]]:
    """On the write thread: each writer in its own SAVEPOINT, then COMMIT.

    Returns each writer's (result, error); a failed COMMIT raises.
    """
    if begin:
        conn.execute("BEGIN IMMEDIATE")
    outcomes: list[tuple[Any, BaseException | None]] = []
    for writer in writers:
        conn.execute("SAVEPOINT writer")
        try:
            outcomes.append((writer(conn), None))
        except Exception as exc:  # noqa: BLE001 - handed to that writer alone
            conn.execute("ROLLBACK TO writer")
            outcomes.append((None, exc))
        conn.execute("RELEASE writer")
    conn.execute("COMMIT")
    return outcomes


@dataclass(frozen=True)
class Result:
    """What a statement run through :class:`AsyncConnection` returns: its rows, already read."""

    rows: list[sqlite3.Row]
    rowcount: int
    lastrowid: int | None

    async def fetchall(self) -> list[sqlite3.Row]:
        return self.rows

    async def fetchone(self) -> sqlite3.Row | None:
        return self.rows[0] if self.rows else None


def _run(conn: sqlite3.Connection, many: bool, sql: str, parameters: Any) -> Result:
    cursor = (conn.executemany if many else conn.execute)(sql, parameters)
    try:
        return Result(cursor.fetchall(), cursor.rowcount, cursor.lastrowid)
    finally:
        cursor.close()


class AsyncConnection:
    """The writer connection seen from the event loop, inside one transaction: each statement
    runs on the write thread."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> Result:
        params = parameters if isinstance(parameters, dict) else tuple(parameters)
        return await self._database.call(_run, False, sql, params)

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Iterable[Any]]) -> Result:
        return await self._database.call(_run, True, sql, seq_of_parameters)


class _NoResult:
    """What a recorded statement returns: nothing can be read from it."""

    def __getattr__(self, name: str) -> Any:
        raise StoreError("a batched write cannot read a statement's result; use Store.write(..., reads=True)")


class _Recorder:
    """The connection an asynchronous writer sees: its statements are collected, then replayed
    by one synchronous writer on the write thread."""

    def __init__(self) -> None:
        self.statements: list[tuple[bool, str, Any]] = []

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> _NoResult:
        self.statements.append((False, sql, parameters if isinstance(parameters, dict) else tuple(parameters)))
        return _NoResult()

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Iterable[Any]]) -> _NoResult:
        self.statements.append((True, sql, [p if isinstance(p, dict) else tuple(p) for p in seq_of_parameters]))
        return _NoResult()

    def replay(self, result: Any) -> Writer:
        def writer(conn: sqlite3.Connection) -> Any:
            for many, sql, parameters in self.statements:
                (conn.executemany if many else conn.execute)(sql, parameters).close()
            return result

        return writer


# (work, reads, future); reads is None for a plain function (write_fn)
_Pending = tuple[Any, bool | None, "asyncio.Future[Any]"]


class Database:
    """The database file: its write thread and writer connection, and its readers."""

    def __init__(self, path: Path, thread: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self.path = path
        self._thread = thread
        self._conn = conn  # used on the write thread only
        self._reader: aiosqlite.Connection | None = None  # fetchall's own connection, see open
        self._point_reader: sqlite3.Connection | None = None  # see read_now
        self.write_lock = asyncio.Lock()
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._urgent = asyncio.Event()

    @classmethod
    async def open(cls, path: Path) -> Database:
        """Open (creating if needed) the database at ``path`` and migrate it."""
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="estampille-store")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(thread, _connect_writer, path)
        except sqlite3.Error as exc:
            thread.shutdown()
            raise StoreError(f"cannot open database in {path.parent}: {exc}") from exc
        database = cls(path, thread, conn)
        try:
            await database.call(schema.migrate, path.parent)
            # Reads (fetchall) have a read-only connection of their own: on the writer's, a read
            # between the statements of an open transaction() saw its uncommitted rows, and
            # waited behind every write on the write thread.
            resolved = await asyncio.to_thread(path.resolve)  # a file system call: off the loop
            database._reader = await aiosqlite.connect(resolved.as_uri() + "?mode=ro", uri=True, isolation_level=None)
            database._reader.row_factory = aiosqlite.Row
        except (sqlite3.Error, StoreError) as exc:  # a migration refused, or the database unusable
            await database.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open database in {path.parent}: {exc}") from exc
        return database

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)  # let queued writers commit
        if self._point_reader is not None:
            self._point_reader.close()
        if self._reader is not None:
            await self._reader.close()
        await self.call(lambda conn: conn.close())
        self._thread.shutdown()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the write thread (outside the group commit)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, self._conn, *args)

    async def rollback(self) -> None:
        """End the open transaction, if any, without committing it."""
        await self.call(_rollback)

    # -- writes ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction; committed when the block exits without error."""
        async with self.write_lock:
            try:
                await self.call(lambda conn: conn.execute("BEGIN IMMEDIATE"))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot begin a transaction: {exc}") from exc
            try:
                yield AsyncConnection(self)
            except BaseException:
                await self.call(_rollback)
                raise
            try:
                await self.call(lambda conn: conn.execute("COMMIT"))
            except sqlite3.Error as exc:
                await self.call(_rollback)
                raise StoreError(f"commit failed: {exc}") from exc

    async def write(self, work: Callable[[Any], Awaitable[T]], *, reads: bool = False, urgent: bool = True) -> T:
        """Run ``work(db)`` atomically and return its result once it is committed (group commit).

        One writer's failure rolls back only its own statements. A writer cancelled while
        waiting may still be committed. Unless ``reads`` is true, ``db`` only records
        ``execute``/``executemany`` calls, replayed on the write thread with the others: such a
        writer cannot use a statement's result (a cursor, a rowcount); a writer that must,
        passes ``reads=True`` and runs statement by statement. A writer that is not ``urgent``
        may wait up to GROUP_LINGER for others to share its commit.
        """
        return await self._enqueue(work, reads, urgent)

    async def write_fn(self, fn: Callable[[sqlite3.Connection], T], *, urgent: bool = True) -> T:
        """Like :meth:`write`, for a plain function run on the write thread with the connection."""
        return await self._enqueue(fn, None, urgent)

    async def _enqueue(self, work: Any, reads: bool | None, urgent: bool) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((work, reads, future))
        if urgent:
            self._urgent.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            if not self._urgent.is_set() and len(self._pending) < GROUP_TARGET:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(GROUP_LINGER):
                        await self._urgent.wait()
            async with self.write_lock:
                self._urgent.clear()
                batch, self._pending = self._pending, []
                outcomes = await self._run_batch(batch)
            for (_, _, future), (result, error) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

    async def _run_batch(self, batch: list[_Pending]) -> list[tuple[Any, BaseException | None]]:
        outcomes: list[tuple[Any, BaseException | None]] = [(None, None)] * len(batch)
        writers: list[tuple[int, Writer]] = []
        readers: list[int] = []
        for number, (work, reads, _) in enumerate(batch):
            if reads is None:  # already a plain function
                writers.append((number, work))
            elif reads:
                readers.append(number)
            else:
                recorder = _Recorder()
                try:
                    result = await work(recorder)  # no I/O: statements are only collected
                except Exception as exc:  # noqa: BLE001 - handed to that writer alone
                    outcomes[number] = (None, exc)
                else:
                    writers.append((number, recorder.replay(result)))
        try:
            if readers:
                await self.call(lambda conn: conn.execute("BEGIN IMMEDIATE"))
                for number in readers:
                    outcomes[number] = await self._run_reader(batch[number][0])
            applied = await self.call(_apply_writers, [writer for _, writer in writers], not readers)
        except (sqlite3.Error, asyncio.CancelledError) as exc:
            await self.call(_rollback)
            error = StoreError(f"transaction failed: {exc}")
            return [(None, error) for _ in batch]
        for (number, _), outcome in zip(writers, applied, strict=True):
            outcomes[number] = outcome
        return outcomes

    async def _run_reader(self, work: Callable[[Any], Awaitable[Any]]) -> tuple[Any, BaseException | None]:
        db = AsyncConnection(self)
        await db.execute("SAVEPOINT writer")
        try:
            result = await work(db)
        except Exception as exc:  # noqa: BLE001 - handed to that writer alone
            await db.execute("ROLLBACK TO writer")
            await db.execute("RELEASE writer")
            return None, exc
        await db.execute("RELEASE writer")
        return result, None

    # -- reads ---------------------------------------------------------------

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        # One trip to the reader's thread, and the statement is reset at once: cursors left
        # open by many concurrent readers kept cached statements busy, so each query was
        # prepared again (about 4 ms per lookup at 2,000 in flight, against 0.15 ms).
        assert self._reader is not None
        try:
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """The first row, or None (for queries that select at most a few rows)."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    def read_now(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row] | None:
        """Rows read on the calling (event loop) thread through a read-only connection of its
        own; None if that fails (the caller then uses fetchall).

        In WAL mode a reader never waits for the writer; with timeout=0 it never sleeps on a
        lock either (SQLITE_BUSY, as in a WAL recovery, gives None). An indexed read costs about
        12 us. This connection's page cache is emptied by every commit, where the writer's own
        stays warm, but a read in the database thread cost two thread hand-overs and took
        that thread from the writes: on the tracker bench (fetches committed every 100 ms),
        reading every lookup here, rather than only those asked while a writer holds the
        database, took the server CPU from a median of 257 to 217 us a page (6 runs each;
        with 50 ms commits it had cost more).
        """
        try:
            if self._point_reader is None:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                reader = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
                reader.row_factory = sqlite3.Row
                self._point_reader = reader
            return self._point_reader.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error:
            return None

    # -- backup --------------------------------------------------------------

    async def backup(self, dest: Path) -> None:
        """Copy the database to ``dest`` with SQLite's online backup API: one step over all
        pages, so one consistent snapshot; the write lock keeps an open transaction of this
        process out of it."""

        def copy(conn: sqlite3.Connection) -> None:
            target = sqlite3.connect(dest)
            try:
                conn.backup(target, pages=-1)
                # One file, no -wal beside it. The cursor is closed before the connection: a
                # statement left open makes close() lazy, and the file would still change after
                # the caller has fingerprinted it.
                cursor = target.execute("PRAGMA journal_mode=DELETE")
                cursor.fetchall()
                cursor.close()
            finally:
                target.close()

        try:
            async with self.write_lock:
                await self.call(copy)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot back up the database to {dest}: {exc}") from exc


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
