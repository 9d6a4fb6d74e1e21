"""A crash run: mail sent to `estampille serve` while it is SIGKILLed and restarted.

Shared by tests/reliability/test_crash_run.py (small) and bench/crash_test.py (2,000
messages). Each message has 3 recipients and a sequence number header; sending
clients retry a message until it gets a 250 (as an MTA would), so a 250 lost in a
kill shows up as a duplicate, never as a loss. The relay is killed at ``kills``
moments chosen at random among the numbers of accepted messages, and started again
on the same port. At the end, once every copy is delivered, the relay's own anchoring
workers batch every record to a local calendar, a (fake) block is mined and the
upgrade worker confirms every batch; then the relay is stopped with SIGTERM and
:func:`check` reads the database and the sink::

    report = await crash_run(tmp_path, messages=200, kills=5, seed=1)
    assert report.problems == []
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

from relay.store import DB_NAME
from tests.support.calendar import FakeCalendar, FakeChain
from tests.support.served import Relay
from tests.support.sink import Sink, free_port

RECIPIENTS = ("un@conseil.example", "deux@conseil.example", "trois@conseil.example")
SENDER = "mairie@ville.example"
SEQ = re.compile(rb"X-Crash-Seq: (\d+)")
CONNECT_RETRY_SECONDS = 0.05
CLIENT_TIMEOUT = 30.0


def crash_config(work: Path, smtp_port: int, sink_port: int, calendar_url: str) -> Path:
    """A relay on a fixed loopback port (it keeps it across restarts), quick retries, tracker on, anchoring on."""
    path = work / "estampille.toml"
    path.write_text(
        f"""
data_dir = "data"
[smtp]
listen_host = "127.0.0.1"
listen_port = {smtp_port}
hostname = "relay.test"
min_free_disk_mb = 1
[upstream]
kind = "smtp"
host = "127.0.0.1"
port = {sink_port}
tls = "none"
timeout = 10.0
[delivery]
retry_first = 0.2
retry_max = 1.0
poll_interval = 0.05
[tracker]
enabled = true
listen_host = "127.0.0.1"
listen_port = 0
[anchor]
enabled = true
calendars = ["{calendar_url}"]
min_calendars = 1
http_for_tests = true
interval = 1
upgrade_interval = 1
retry_first = 0.5
retry_max = 1.0
""",
        encoding="utf-8",
    )
    return path


def message(seq: int) -> bytes:
    return (
        f"From: Mairie <{SENDER}>\r\nTo: {', '.join(RECIPIENTS)}\r\nSubject: Convocation {seq}\r\n"
        f"Message-ID: <crash-{seq}@ville.example>\r\nX-Crash-Seq: {seq}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Vous etes convoque a la seance numero {seq}.\r\n"
    ).encode()


@dataclass
class CrashReport:
    messages: int
    accepted: int = 0
    kills: int = 0
    send_retries: int = 0
    delivered_copies: int = 0
    duplicates: int = 0
    records: int = 0
    anchored: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"RESULT messages={self.messages} accepted={self.accepted} kills={self.kills} "
                f"delivered_copies={self.delivered_copies} duplicates={self.duplicates} records={self.records} "
                f"anchored={self.anchored} lost={len(self.problems)} seconds={self.seconds:.1f}")


class _Run:
    def __init__(self, config: Path, messages: int, clients: int) -> None:
        self.config = config
        self.port = 0
        self.todo = list(range(messages))
        self.accepted: set[int] = set()
        self.retries = 0
        self.relay: Relay | None = None
        self.up = asyncio.Event()
        self.progress = asyncio.Event()
        self.clients = clients

    async def start_relay(self) -> None:
        self.relay = await Relay.start(self.config)
        self.port = self.relay.port.result()
        self.up.set()

    async def kill(self) -> None:
        assert self.relay is not None
        self.up.clear()
        self.relay.proc.send_signal(signal.SIGKILL)
        await self.relay.wait()

    async def sender(self) -> None:
        while self.todo:
            seq = self.todo.pop(0)
            while True:
                await self.up.wait()
                try:
                    await aiosmtplib.send(message(seq), sender=SENDER, recipients=list(RECIPIENTS),
                                          hostname="127.0.0.1", port=self.port, timeout=CLIENT_TIMEOUT)
                except (TimeoutError, aiosmtplib.SMTPException, OSError):
                    self.retries += 1  # killed mid-transaction, or not listening yet: send again
                    await asyncio.sleep(CONNECT_RETRY_SECONDS)
                    continue
                self.accepted.add(seq)
                self.progress.set()
                break

    async def killer(self, moments: list[int]) -> int:
        kills = 0
        for moment in moments:
            while len(self.accepted) < moment:
                self.progress.clear()
                await self.progress.wait()
            await self.kill()
            kills += 1
            await self.start_relay()
        return kills


async def crash_run(work: Path, *, messages: int, kills: int = 5, clients: int = 8, seed: int | None = None,
                    deadline: float = 240.0) -> CrashReport:
    """Send, kill and restart, drain, anchor, then check; the report lists every problem found."""
    rng = random.Random(seed)
    moments = sorted(rng.sample(range(max(1, messages // 20), max(2, messages * 19 // 20)), kills))
    report = CrashReport(messages=messages)
    started = time.monotonic()
    chain = FakeChain()
    async with Sink() as sink, FakeCalendar(chain) as calendar:
        config_path = crash_config(work, free_port(), sink.port, calendar.url)
        run = _Run(config_path, messages, clients)
        await run.start_relay()
        try:
            senders = [asyncio.create_task(run.sender()) for _ in range(clients)]
            report.kills = await run.killer(moments)
            await asyncio.wait_for(asyncio.gather(*senders), deadline)
            report.accepted, report.send_retries = len(run.accepted), run.retries
            await _until_delivered(work / "data", run.accepted, sink, deadline)
            # The relay's own anchoring workers: every leaf in a batch at the calendar, a block
            # is mined, and the upgrade worker grafts it.
            await _until(lambda: _anchoring(work / "data")[:2] == (0, 0), deadline, "every leaf submitted")
            calendar.confirm()
            await _until(lambda: _anchoring(work / "data")[2] == 0, deadline, "every batch confirmed")
        finally:
            assert run.relay is not None
            run.relay.proc.send_signal(signal.SIGTERM)
            code = await run.relay.wait()
        if code != 0:
            report.problems.append(f"relay exited {code} on SIGTERM")
        check(report, work / "data", run.accepted, sink)
    report.seconds = time.monotonic() - started
    return report


async def _until_delivered(data_dir: Path, accepted: set[int], sink: Sink, deadline: float) -> None:
    """Until the sink holds every accepted message for every recipient and nothing is left in the queue."""
    wanted = {(seq, rcpt) for seq in accepted for rcpt in RECIPIENTS}
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = {(_seq(m.data), m.rcpt_tos[0]) for m in sink.messages}
        if wanted <= got and not await asyncio.to_thread(_open_deliveries, data_dir):
            return
        await asyncio.sleep(0.2)


async def _until(condition, deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not await asyncio.to_thread(condition):
        if time.monotonic() > end:
            raise TimeoutError(f"waited {deadline:.0f}s for {what}")
        await asyncio.sleep(0.2)


def _anchoring(data_dir: Path) -> tuple[int, int, int]:
    """(unbatched leaves, batches still submitting, batches the calendar's Bitcoin attestation has not reached).

    No header source is configured here: a batch with its attestation is 'attested' (unchecked), which is as far
    as the relay can take it on its own.
    """
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True)) as db:
        unbatched = db.execute("SELECT COUNT(*) FROM anchor_leaves WHERE batch_id IS NULL").fetchone()[0]
        submitting = db.execute("SELECT COUNT(*) FROM anchor_batches WHERE state = 'submitting'").fetchone()[0]
        open_ = db.execute(
            "SELECT COUNT(*) FROM anchor_batches WHERE state NOT IN ('attested', 'confirmed')").fetchone()[0]
    return unbatched, submitting, open_


def _open_deliveries(data_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True)) as db:
        return db.execute("SELECT COUNT(*) FROM deliveries WHERE state NOT IN ('delivered', 'failed')").fetchone()[0]


def _seq(data: bytes) -> int:
    found = SEQ.search(data)
    return int(found.group(1)) if found else -1


def check(report: CrashReport, data_dir: Path, accepted: set[int], sink: Sink) -> None:
    """Every accepted message at every recipient; every copy with its records; every record anchored."""
    copies = Counter((_seq(m.data), m.rcpt_tos[0]) for m in sink.messages)
    report.delivered_copies = sum(copies.values())
    report.duplicates = sum(n - 1 for n in copies.values() if n > 1)
    for seq in sorted(accepted):
        for rcpt in RECIPIENTS:
            if not copies[(seq, rcpt)]:
                report.problems.append(f"message {seq} accepted but never delivered to {rcpt}")
    db = sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True)
    try:
        _check_records(report, db, sink)
    finally:
        db.close()


def _check_records(report: CrashReport, db: sqlite3.Connection, sink: Sink) -> None:
    rows = db.execute(
        "SELECT d.copy_sha256, d.state, r1.type, r2.type, r2.body FROM deliveries d"
        " LEFT JOIN records r1 ON r1.digest = d.record_digest LEFT JOIN records r2 ON r2.digest = d.handoff_digest"
    ).fetchall()
    by_copy = {row[0]: row for row in rows if row[0]}
    for m in sink.messages:
        digest = hashlib.sha256(m.data).hexdigest()
        row = by_copy.get(digest)
        if row is None:
            report.problems.append(f"a copy of message {_seq(m.data)} to {m.rcpt_tos[0]} has no stored copy")
        elif row[1] != "delivered" or row[2] != "delivery" or row[3] != "handoff":
            report.problems.append(f"copy {digest[:12]}: state {row[1]}, records {row[2]}/{row[3]}")
    report.records = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    report.anchored = db.execute(
        "SELECT COUNT(*) FROM records r JOIN anchor_leaves l ON l.digest = r.digest"
        " JOIN anchor_batches b ON b.id = l.batch_id WHERE b.state IN ('attested', 'confirmed')"
    ).fetchone()[0]
    if report.anchored != report.records:
        report.problems.append(f"{report.records - report.anchored} of {report.records} records not anchored")
