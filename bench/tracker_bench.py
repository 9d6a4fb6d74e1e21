"""Tracker throughput: GET pages and POST acknowledgments at 50 concurrent clients,
against a bare aiohttp handler measured in the same run.

    /work/venv/bin/python bench/tracker_bench.py [--requests 16000] [--concurrency 50]

Each server runs in its own subprocess on 127.0.0.1 (port 0), on uvloop as the service
does; the client is aiohttp in this process with a bounded number of requests. Every GET
records a classified fetch and every POST a first acknowledgment (each to its own token),
durably (synchronous=FULL), and the counts of fetches and receipts are checked afterwards.
Goals: GET at least 0.5 of the bare handler's rate; at least 1,000 acks/s.
Rates depend on what else runs on the machine, so the GETs of the two servers are
measured in alternating rounds (each round's order reversed from the last): a burst of
other work then slows both alike, where one run after the other put it on one side only.
The tracker answers a GET before its fetch is written (within tracker.recorder's flush
window); after each tracker round the bench waits until that round's fetches are in the
database, so the writing never runs during a bare round. That wait is not counted in the
tracker's rate, but its server CPU is. Rounds are long (2,000 GETs, several commits each), so
most of the writing runs during the round, as it does under steady load: with rounds of 500
GETs, shorter than the flush window, nearly all of it fell after the round, and the ratio
read about 0.6 where steady load gives about 0.5.
The server's and the client's CPU time per request are printed too (from /proc).
The last line is ``RESULT get_ratio=… get_p99_ms=… post_per_s=… post_p99_ms=…``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import re
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.config import Config
from relay.evidence.records import delivery_record, iso_time, submission_record
from relay.service import settle_heap
from relay.store import DB_NAME, Store
from tracker import antiforgery
from tracker.app import start_tracker

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
BARE_PAGE = "<!doctype html><title>bare</title><p>ok</p>" * 20  # about the size of an ack page
WARMUP = 300
SETTLE_SECONDS = 10.0  # the longest the tracker may take to write a round's fetches
ROUNDS = 8  # GET rounds per server, alternated between the bare handler and the tracker
DELIVERED_AGO = 3600.0  # deliveries an hour old: fetches are outside the scanner window


# -- servers (run in subprocesses) ------------------------------------------

async def serve_bare() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=BARE_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/a/{token}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    settle_heap()  # both servers run with the process settings of `estampille serve`
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


async def serve_tracker(data_dir: Path) -> None:
    config = Config.from_toml(f'data_dir = "{data_dir}"\n[tracker]\nlisten_port = 0\n')
    store = await Store.open(config.data_path)
    server = await start_tracker(config, store)
    settle_heap()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"PORT {server.port}", flush=True)
    await stop.wait()
    await server.close()  # as `estampille serve` does: queued fetches are written first
    await store.close()


# -- data --------------------------------------------------------------------

async def make_tokens(data_dir: Path, count: int) -> list[str]:
    """``count`` deliveries with one token each, as certify leaves them (bulk, one transaction)."""
    store = await Store.open(data_dir)
    now = time.time() - DELIVERED_AGO
    submission_id = uuid.uuid4().hex
    recipients = [f"member{n}@commune.example" for n in range(count)]
    sub = submission_record(
        data_sha256="0" * 64, mail_from="mairie@commune.example", rcpt_to=recipients, client_address="127.0.0.1",
        auth_user=None, tls=None, received_at=iso_time(now), message_id=f"<{submission_id}@bench>", attachments=[],
    )
    tokens = [secrets.token_urlsafe(22) for _ in recipients]
    async with store.transaction() as db:
        await Store.insert_record(db, sub, submission_id=submission_id, now=now)
        await Store.insert_submission(db, {
            "id": submission_id, "received_at": now, "mail_from": "mairie@commune.example",
            "client_address": "127.0.0.1", "message_id": f"<{submission_id}@bench>",
            "subject": "Convocation au conseil municipal", "size": 1000, "data_sha256": "0" * 64,
            "record_digest": sub.digest,
        }, [(r, "[]") for r in recipients])
    rows = await store.delivery_states(submission_id)
    async with store.transaction() as db:
        for row, token in zip(rows, tokens, strict=True):
            record = delivery_record(
                submission_digest=sub.digest, recipient=row.recipient, copy_sha256="1" * 64, dkim=[],
                ack_link_inserted=True, ack_link_reason=None, certified_at=iso_time(now),
            )
            await Store.insert_record(db, record, delivery_id=row.id, now=now)
            await Store.set_delivery_copy(db, row.id, "1" * 64, record.digest, now)
            await Store.insert_ack_token(db, token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                                         delivery_id=row.id, target_url=None, now=now)
    await store.close()
    return tokens


async def count_rows(data_dir: Path, table: str) -> int:
    store = await Store.open(data_dir)
    try:
        return (await store.fetchone(f"SELECT COUNT(*) FROM {table}"))[0]
    finally:
        await store.close()


# -- client --------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    rate: float
    p99_ms: float
    ok: int
    server_cpu_us: float  # server CPU time per request: steadier than rates on a shared machine
    client_cpu_us: float


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Client:
    """Requests to one server over ``concurrency`` kept-alive connections; totals over its rounds."""

    def __init__(self, base: str, concurrency: int, pid: int) -> None:
        self.base, self.concurrency, self.pid = base, concurrency, pid
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency), headers={"User-Agent": USER_AGENT}
        )
        self.reset()

    def reset(self) -> None:
        self.latencies: list[float] = []
        self.elapsed = self.server_cpu = self.client_cpu = 0.0
        self.ok = 0

    async def round(self, requests: list[tuple[str, str, dict | None]],
                    settled: Callable[[], Awaitable[None]] | None = None) -> None:
        """The requests, ``concurrency`` at a time; then ``settled()``, whose time is not counted
        in the rate but whose server CPU is (the tracker writes its fetches after answering)."""
        queue = iter(requests)

        async def worker() -> None:
            for method, path, form in queue:
                start = time.perf_counter()
                async with self.http.request(method, self.base + path, data=form) as response:
                    await response.read()
                    self.ok += response.status == 200
                self.latencies.append(time.perf_counter() - start)

        cpu_before, client_before, began = cpu_seconds(self.pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        self.elapsed += time.perf_counter() - began
        if settled is not None:
            await settled()
        self.server_cpu += cpu_seconds(self.pid) - cpu_before
        self.client_cpu += time.process_time() - client_before

    def result(self) -> Run:
        count = len(self.latencies)
        latencies = sorted(self.latencies)
        return Run(count / self.elapsed, latencies[int(count * 0.99) - 1] * 1000, self.ok,
                   self.server_cpu / count * 1e6, self.client_cpu / count * 1e6)

    async def close(self) -> None:
        await self.http.close()


class FetchesWritten:
    """Waits until the tracker has written the fetches of the GETs sent so far: it answers a GET
    before writing its fetch, and the writing must neither fall into the bare handler's next round
    (slowing it) nor escape the tracker's server CPU."""

    def __init__(self, data_dir: Path) -> None:
        uri = (data_dir / DB_NAME).resolve().as_uri() + "?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
        self.expected = 0

    def after(self, gets: int) -> Callable[[], Awaitable[None]]:
        self.expected += gets
        return self._settled

    async def _settled(self) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while self._db.execute("SELECT COUNT(*) FROM fetches").fetchone()[0] < self.expected:
            if time.monotonic() > deadline:
                raise SystemExit(f"the tracker did not write {self.expected} fetches within {SETTLE_SECONDS} s")
            await asyncio.sleep(0.005)

    def close(self) -> None:
        self._db.close()


def rounds(requests: list, count: int) -> list[list]:
    size = -(-len(requests) // count)
    return [requests[n:n + size] for n in range(0, len(requests), size)]


async def start_server(*args: str) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    match = re.match(rb"PORT (\d+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(match.group(1))


async def stop_server(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await proc.wait()


async def bench(count: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tracker-bench-") as tmp:
        data_dir = Path(tmp)
        tokens = await make_tokens(data_dir, WARMUP + count * 2)
        print(f"{len(tokens)} deliveries with tokens prepared", flush=True)
        rng = random.Random(1)
        gets = [("GET", f"/a/{rng.choice(tokens)}", None) for _ in range(count)]
        warm = [("GET", f"/a/{t}", None) for t in tokens[:WARMUP]]

        bare_proc, bare_port = await start_server("--serve", "bare")
        proc, port = await start_server("--serve", "tracker", "--data", str(data_dir))
        bare = Client(f"http://127.0.0.1:{bare_port}", concurrency, bare_proc.pid)
        tracker = Client(f"http://127.0.0.1:{port}", concurrency, proc.pid)
        written = FetchesWritten(data_dir)
        try:
            await bare.round(warm)
            await tracker.round(warm, written.after(len(warm)))
            bare.reset()
            tracker.reset()
            for number, chunk in enumerate(rounds(gets, ROUNDS)):
                for client in (bare, tracker) if number % 2 == 0 else (tracker, bare):
                    await client.round(chunk, written.after(len(chunk)) if client is tracker else None)
            bare_get, get = bare.result(), tracker.result()
            print(f"bare    GET  {bare_get.rate:7.0f} req/s  p99 {bare_get.p99_ms:6.1f} ms  server CPU "
                  f"{bare_get.server_cpu_us:4.0f} us/req  client CPU {bare_get.client_cpu_us:4.0f} us/req", flush=True)
            print(f"tracker GET  {get.rate:7.0f} req/s  p99 {get.p99_ms:6.1f} ms  server CPU {get.server_cpu_us:4.0f} us/req"
                  f"  client CPU {get.client_cpu_us:4.0f} us/req  ({get.ok} ok)", flush=True)
            secret = antiforgery.load_secret(data_dir)
            posts = [("POST", f"/a/{t}", {antiforgery.FIELD: antiforgery.form_value(secret, t)})
                     for t in tokens[WARMUP + count: WARMUP + 2 * count]]
            tracker.reset()
            await tracker.round(posts)
            post = tracker.result()
        finally:
            written.close()
            await bare.close()
            await tracker.close()
            await stop_server(bare_proc)
            await stop_server(proc)
        receipts, fetches = await count_rows(data_dir, "receipts"), await count_rows(data_dir, "fetches")
        print(f"tracker POST {post.rate:7.0f} ack/s  p99 {post.p99_ms:6.1f} ms  server CPU {post.server_cpu_us:4.0f} us/req"
              f"  ({post.ok} ok, {receipts} receipts and {fetches} fetches in the store)", flush=True)
        if post.ok != count or receipts != count or get.ok != count or fetches != WARMUP + count:
            raise SystemExit("some requests failed, or receipts or fetches are missing")
        print(f"RESULT get_ratio={get.rate / bare_get.rate:.2f} get_p99_ms={get.p99_ms:.1f} "
              f"post_per_s={post.rate:.0f} post_p99_ms={post.p99_ms:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16000, help="GET requests, and POST requests, per run")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--serve", choices=("bare", "tracker"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "bare":
        uvloop.run(serve_bare())  # both servers on the loop `estampille serve` runs on
    elif args.serve == "tracker":
        uvloop.run(serve_tracker(args.data))
    else:
        asyncio.run(bench(args.requests, args.concurrency))


if __name__ == "__main__":
    main()
