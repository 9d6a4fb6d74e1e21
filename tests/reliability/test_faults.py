"""Faults around the relay: a flapping upstream, calendars that time out or answer garbage,
a full disk, a database locked by another process. Nothing accepted may be lost, our
own trouble is a 4xx (never a 5xx, never a hang), and the relay recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiosmtplib
import pytest

from relay.anchor.worker import Anchorer, export_ots
from relay.config import AnchorConfig
from relay.errors import StoreError
from relay.evidence.ots_verify import verify_ots
from relay.evidence.records import Record
from relay.store import DB_NAME, Store
from tests.support.calendar import BitcoindFake, FakeCalendar, FakeChain
from tests.support.polling import until
from tests.support.relay import relay_config, running
from tests.support.served import Relay, write_config
from tests.support.sink import Sink

WAIT_SECONDS = 30.0
RECIPIENTS = ["un@conseil.example", "deux@conseil.example", "trois@conseil.example"]


def message(n: int, body: str = "Vous etes convoque.\r\n") -> bytes:
    return (f"From: mairie@ville.example\r\nTo: conseil@ville.example\r\nSubject: Convocation {n}\r\n"
            f"Message-ID: <fault-{n}@ville.example>\r\n\r\n{body}").encode()


async def send(port: int, n: int, recipients=RECIPIENTS, body: str = "Vous etes convoque.\r\n") -> int:
    """The code the relay answered (250, or the 4xx/5xx of MAIL or DATA)."""
    try:
        await aiosmtplib.send(message(n, body), sender="mairie@ville.example", recipients=recipients,
                              hostname="127.0.0.1", port=port, timeout=WAIT_SECONDS)
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code
    return 250


def _subject(data: bytes) -> bytes:
    return data.split(b"\r\nSubject: ")[1].split(b"\r\n")[0]


async def all_delivered(store: Store, expected: int) -> bool:
    row = await store.fetchone("SELECT COUNT(*) AS n, SUM(state = 'delivered') AS ok FROM deliveries")
    return row["n"] == expected and row["ok"] == expected


# -- upstream -----------------------------------------------------------------


async def test_flapping_upstream_refusing_4xx_250_delivers_each_copy_once(tmp_path):
    """Each recipient's first tries get 451, 421 (closing) and 452; the upstream also stops
    listening for a while. Every copy arrives exactly once; every failed try is recorded."""
    async with Sink() as sink:
        for rcpt in RECIPIENTS:
            sink.script(rcpt, ["451 4.3.0 busy", "421 4.3.2 closing", "452 4.3.1 full"] * 10)
        async with running(relay_config(tmp_path, sink.port)) as service:
            for n in range(10):
                assert await send(service.smtp_port, n) == 250
            for _ in range(4):  # refuse connections, then listen again, while retries are due
                tries = len(sink.attempts)
                await until(lambda: _true(len(sink.attempts) > tries), "a try")  # noqa: B023 - awaited in this iteration
                await sink.stop()
                await until(lambda: _refused_attempt(service.store), "a refused connection")
                await sink.start()
            await until(lambda: all_delivered(service.store, 30), "every delivery")
            codes = await service.store.fetchall("SELECT code, COUNT(*) AS n FROM attempts GROUP BY code")
    copies = [(m.rcpt_tos, _subject(m.data)) for m in sink.messages]
    assert len(copies) == 30 and len(set(copies)) == 30
    seen = {row["code"]: row["n"] for row in codes}
    assert seen[250] == 30 and {451, 421, 452, None} <= set(seen)


async def _true(value: bool) -> bool:
    return value


async def _refused_attempt(store: Store) -> bool:
    return bool(await store.fetchone("SELECT 1 FROM attempts WHERE code IS NULL AND finished_at > ?",
                                     (time.time() - 0.5,)))


# -- calendars ----------------------------------------------------------------


async def test_calendars_timing_out_or_answering_garbage_delay_but_never_drop_a_batch(tmp_path):
    chain = FakeChain()
    now = [time.time()]
    store = await Store.open(tmp_path / "data")
    recs = [Record.from_fields({"type": "receipt", "delivery": f"d{i}", "kind": "acknowledged"}) for i in range(20)]
    async with store.transaction() as db:
        for rec in recs:
            await Store.insert_record(db, rec, now=now[0])
    try:
        async with FakeCalendar(chain) as slow, FakeCalendar(chain) as junk, FakeCalendar(chain) as good, \
                BitcoindFake(chain) as node:
            slow.delay, junk.garbage = 5.0, True
            config = AnchorConfig(calendars=[slow.url, junk.url, good.url], min_calendars=2, allowlist=[],
                                  timeout=0.5, retry_first=10.0, retry_max=100.0, http_for_tests=True,
                                  bitcoind=node.url, regtest=True)
            async with Anchorer(store, config, clock=lambda: now[0]) as anchorer:
                started = time.monotonic()
                [outcome] = await anchorer.batch_all()
                assert time.monotonic() - started < 4.0  # the slow calendar cost its timeout, not its delay
                assert outcome.state == "submitting" and outcome.accepted == (good.url,)
                slow.delay, junk.garbage = 0.0, False
                now[0] += 11
                [retry] = await anchorer.retry_submissions()
                assert retry.state == "pending" and len(retry.accepted) == 3
                for cal in (slow, junk, good):
                    cal.confirm()
                junk.garbage, slow.delay = True, 5.0  # the upgrade asks them too
                report = await anchorer.upgrade()
            assert report.confirmed == (outcome.batch_id,)
    finally:
        ots = [await export_ots(store, rec.digest) for rec in recs]
        await store.close()
    headers = dict(enumerate(chain.headers))
    assert all(verify_ots(rec.body, proof, headers, regtest=True).ok for rec, proof in zip(recs, ots, strict=True))


# -- full disk ----------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, megabytes: int):
    """A tmpfs of ``megabytes`` at ``path`` (root only); yields a function that grows it."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    if not mounted:
        yield None
        return
    try:
        yield lambda mb: subprocess.run(["mount", "-o", f"remount,size={mb}m", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("floor_mb", [1, 0])
async def test_full_disk_answers_452_or_451_and_loses_nothing_accepted(tmp_path, monkeypatch, floor_mb):
    """On a 6 MB tmpfs when we can mount one (else ENOSPC injected into the store's writes):
    every refusal is 452 (MAIL, below smtp.min_free_disk_mb) or 451 (DATA: with no floor, the
    writes themselves fail); once space is back, everything accepted is delivered."""
    body = "Piece jointe: " + "x" * 76 + "\r\n"
    big = body * 3000  # about 270 kB a message, and as much again for each copy
    with small_tmpfs(tmp_path / "disk", 6) as grow:
        if grow is None:
            grow = _inject_enospc(monkeypatch)
        async with Sink() as sink:
            config = relay_config(tmp_path / "disk" / "data", sink.port, smtp={"min_free_disk_mb": floor_mb})
            async with running(config) as service:
                codes, refusals = [], []
                while len(codes) < 60 and codes[-3:] != ["refused"] * 3:
                    code = await send(service.smtp_port, len(codes), RECIPIENTS[:2], big)
                    assert code in (250, 451, 452), code
                    codes.append(code if code == 250 else "refused")
                    refusals.append(code)
                accepted = codes.count(250)
                print(f"floor {floor_mb} MB: {accepted} accepted, refusals {sorted(set(refusals) - {250})}")
                assert accepted and "refused" in codes
                grow(64)
                await until(lambda: all_delivered(service.store, 2 * accepted), "the accepted messages", 60)
                assert await send(service.smtp_port, 999, RECIPIENTS[:2]) == 250
                await sink.wait_for(2 * accepted + 2)
    assert len({(m.rcpt_tos, _subject(m.data)) for m in sink.messages}) == 2 * accepted + 2


def _inject_enospc(monkeypatch):
    """No tmpfs: writes of message files fail with ENOSPC after the first few, until 'grown'."""
    full = {"writes": 0, "grown": False}
    original = Store._put_blob_sync

    def put(self, data):
        full["writes"] += 1
        if full["writes"] > 8 and not full["grown"]:
            raise StoreError("cannot write message file: No space left on device")
        return original(self, data)

    monkeypatch.setattr(Store, "_put_blob_sync", put)
    return lambda mb: full.update(grown=True)


# -- a database locked by another process ---------------------------------------

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


def hold_write_lock(database: Path) -> subprocess.Popen:
    """Another process takes the database's write lock; returns once it holds it (blocking)."""
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(database)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=10)


async def test_locked_database_gets_451_before_the_client_gives_up_then_recovers(tmp_path):
    async with Sink() as sink:
        async with running(relay_config(tmp_path, sink.port)) as service:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, timeout=20) as client:
                # in a thread: the relay on this loop must be able to finish what it is writing
                locker = await asyncio.to_thread(hold_write_lock, tmp_path / DB_NAME)
                try:
                    started = time.monotonic()
                    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                        await client.sendmail("mairie@ville.example", RECIPIENTS, message(1))
                    assert refused.value.code == 451 and time.monotonic() - started < 20
                finally:
                    release(locker)
                await client.sendmail("mairie@ville.example", RECIPIENTS, message(2))  # same session
            got = await sink.wait_for(3)
            assert await until(lambda: all_delivered(service.store, 3), "deliveries")
    assert all(b"Subject: Convocation 2" in m.data for m in got)


async def test_outcome_that_could_not_be_recorded_is_recorded_once_the_lock_is_gone(tmp_path):
    """The upstream said 250 while another process held the write lock: the hand-off is
    recorded when the lock goes, without a restart and without sending the copy again.
    (The relay runs as a subprocess: the sink blocks this loop while the lock is taken.)"""
    lockers = []

    def lock_then_accept(envelope):
        if not lockers:  # while the relay waits for this reply, someone takes the database
            lockers.append(hold_write_lock(tmp_path / "data" / DB_NAME))
        return None

    async with Sink() as sink:
        sink.reply = lock_then_accept
        relay = await Relay.start(write_config(tmp_path, sink.port))
        try:
            assert await send(relay.port.result(), 1, RECIPIENTS[:1]) == 250
            await sink.wait_for(1)
            try:
                await until(lambda: _true(b"not recorded" in relay.log), "the failed write", 20)
            finally:
                release(lockers[0])
            await until(lambda: _true(_states(tmp_path / "data") == [("delivered", 1)]), "the hand-off record", 20)
        finally:
            relay.proc.send_signal(signal.SIGTERM)
            await relay.wait()
    assert len(sink.messages) == 1


def _states(data_dir: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True)) as db:
        return db.execute("SELECT state, handoff_digest IS NOT NULL FROM deliveries").fetchall()


# -- file descriptors exhausted -----------------------------------------------------

FD_LIMIT = 128


async def test_idle_connection_flood_exhausting_file_descriptors_is_survived(tmp_path):
    """200 idle connections against a relay allowed 128 open files: it cannot accept new
    clients (nor open the upstream), yet it keeps running; once they close it takes mail
    again, and everything it accepted is delivered. (Many clients would do this; one client
    alone is stopped earlier by smtp.max_sessions_per_client, raised here.)"""
    async with Sink() as sink:
        relay = await Relay.start(write_config(tmp_path, sink.port, smtp="max_sessions_per_client = 1000"))
        try:
            pid, port = relay.proc.pid, relay.port.result()
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
            assert await send(port, 1, RECIPIENTS[:1]) == 250
            await sink.wait_for(1)
            flood: list[socket.socket] = []
            try:
                for _ in range(200):
                    sock = socket.socket()
                    sock.setblocking(False)
                    sock.connect_ex(("127.0.0.1", port))
                    flood.append(sock)
                await until(lambda: _true(len(os.listdir(f"/proc/{pid}/fd")) >= FD_LIMIT), "the limit reached")
                # Usually refused or never answered; should a descriptor come free meanwhile, the
                # relay may take it (a small message needs no file): then it must deliver it too.
                try:
                    await aiosmtplib.send(message(2), sender="mairie@ville.example", recipients=RECIPIENTS[:1],
                                          hostname="127.0.0.1", port=port, timeout=2)
                    during_flood = {b"Convocation 2"}
                except (TimeoutError, aiosmtplib.SMTPException, OSError):
                    during_flood = set()
            finally:
                for sock in flood:
                    sock.close()
            await until(lambda: _sent(port, 3), "a transaction after the flood")
            expected = {b"Convocation 1", b"Convocation 3"} | during_flood
            got = await sink.wait_for(len(expected))
            assert relay.proc.returncode is None
        finally:  # whatever failed above, the relay does not outlive the test
            relay.proc.send_signal(signal.SIGTERM)
            code = await relay.wait()
    assert {_subject(m.data) for m in got} == expected
    assert code == 0


async def _sent(port: int, n: int) -> bool:
    try:
        return await send(port, n, RECIPIENTS[:1]) == 250
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        return False
