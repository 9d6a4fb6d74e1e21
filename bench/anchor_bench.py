"""Anchoring benchmark: build and persist batches of 10^4, 10^5 and 10^6 leaves, export proofs.

    python bench/anchor_bench.py [--sizes 10000,100000,1000000]

A batch of the relay's default ``anchor.max_batch`` leaves (a full batch) is
always measured too: its leaf's proof is the size relay users get.

Each size runs in a fresh child process with a fresh temporary store, so its
peak RSS is its own. The child inserts N evidence records (not timed), then
times one ``Anchorer.batch()``: read the waiting leaves, nonces, Merkle tree,
one POST to each of three local fake calendars, and the single transaction
that stores the batch, the tree and every leaf's nonce and position. The
baseline, measured in the same child, is the least any batcher must do with
the same leaves: hash each one with its nonce (hashlib) and write one row per
leaf into a fresh SQLite table with executemany. The batch's CPU time (all
threads) is printed beside its wall time: on a shared machine the difference
is time spent waiting for the cores or the disk. Then one calendar puts the
root in a block and the upgrade runs, checking the attestation against the
block header (a local bitcoind stand-in); the proof of one leaf is exported
(median time of 20 exports) and its size reported: one calendar's path (each
further calendar whose attestation has checked by then adds its own path).

Proof size depends on the calendars: a real calendar aggregates other
clients' digests and commitments, and its transaction sits among others in a
block. The fake calendars here have the shape of a real calendar's answer
(tests.support.calendar.MAINNET_LIKE: 1,140 bytes from the submitted root to
the Bitcoin attestation, as in a real proof of block 808746), so the proof
sizes are those real calendars would give; the size of our own part (file
digest, nonce, path) is printed separately.

A burst is measured too, in its own child: 10,000 records at the default
``anchor.max_batch`` (79 batches), three calendars that answer after 0.25 s, two
of them refusing the first submission: the time of one submission round
(``batch_all``), one retry round and one upgrade round, against the 79 x 0.25 s
a round takes one batch at a time, and the most requests each calendar had in
flight at once (``anchor.calendar_concurrency`` at most).

RFC 3161 tokens, in their own child: 1,000 records at the default ``anchor.max_batch`` (8 batches),
one calendar, and a local TSA (``openssl ts -reply``, tests/support/tsa.py): the requests the TSA
received per batch (goal: 1, one token per batch root) and the submission round's time, against
the same round without a TSA measured in the same child (the baseline).

The last line is: RESULT batch_1e6_s=… batch_1e6_rss_mb=… ots_bytes=… requests_per_calendar=…
ots_bytes_1e6=… burst_round_s=… tsa_requests_per_batch=…, where batch_1e6_* and ots_bytes_1e6 are
those of the largest size (10^6 by default), ots_bytes that of a full batch at the default
anchor.max_batch, and burst_round_s the slowest of the burst's three rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support.calendar provides the fake calendars

from relay.anchor import merkle  # noqa: E402
from relay.anchor.worker import Anchorer, export_ots  # noqa: E402
from relay.config import AnchorConfig, TSAAuthority, TSAConfig  # noqa: E402
from relay.evidence.ots_verify import verify_ots  # noqa: E402
from relay.evidence.records import Record  # noqa: E402
from relay.store import Store  # noqa: E402
from tests.support.calendar import MAINNET_LIKE, BitcoindFake, FakeCalendar, FakeChain  # noqa: E402
from tests.support.tsa import LocalTSA, TSAPki  # noqa: E402

INSERT_CHUNK = 50_000
EXPORTS = 20
BURST = 10_000  # records of the burst, batched at the default anchor.max_batch
BURST_DELAY = 0.25  # seconds each calendar takes to answer during the burst
TSA_RECORDS = 1_000  # records of the token measure, batched at the default anchor.max_batch


def cpu_s() -> float:
    """CPU time of this process, all threads (aiosqlite works in one): wall time minus waiting."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def insert_leaves(store: Store, n: int) -> list[str]:
    digests = []
    for start in range(0, n, INSERT_CHUNK):
        recs = [
            Record.from_fields({"type": "receipt", "delivery": f"bench-{i}", "kind": "acknowledged"})
            for i in range(start, min(n, start + INSERT_CHUNK))
        ]
        async with store.transaction() as db:
            await Store.insert_records(db, recs, now=time.time())
        digests.extend(r.digest for r in recs[:1])
    return digests


def baseline(digests_hex: list[str], nonces: bytes, path: Path) -> float:
    """Hash every leaf with its nonce and write one row per leaf: the floor for any batcher."""
    started = time.perf_counter()
    leaves = [hashlib.sha256(bytes.fromhex(d) + nonces[i * 16 : i * 16 + 16]).digest() for i, d in enumerate(digests_hex)]
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE leaves (digest TEXT PRIMARY KEY, nonce BLOB, position INTEGER, hash BLOB)")
    with db:
        db.executemany(
            "INSERT INTO leaves VALUES (?, ?, ?, ?)",
            ((d, nonces[i * 16 : i * 16 + 16], i, leaves[i]) for i, d in enumerate(digests_hex)),
        )
    db.close()
    return time.perf_counter() - started


async def one_size(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "data")
        chain = FakeChain()
        cals = [FakeCalendar(chain, **MAINNET_LIKE) for _ in range(3)]
        for cal in cals:
            await cal.start()
        node = await BitcoindFake(chain).start()
        try:
            t0 = time.perf_counter()
            sample = await insert_leaves(store, n)
            insert_s = time.perf_counter() - t0
            all_digests = [digest for _, digest in await store.unbatched_leaves(n)]
            base_s = baseline(all_digests, os.urandom(16 * n), Path(tmp) / "baseline.sqlite3")
            del all_digests
            config = AnchorConfig(calendars=[c.url for c in cals], allowlist=[], max_batch=n, http_for_tests=True,
                                  bitcoind=node.url, regtest=True)
            async with Anchorer(store, config) as anchorer:
                cpu0, t0 = cpu_s(), time.perf_counter()
                outcome = await anchorer.batch()
                batch_s, batch_cpu_s = time.perf_counter() - t0, cpu_s() - cpu0
                rss = peak_rss_mb()
                assert outcome is not None and outcome.leaves == n and outcome.state == "pending"
                requests = max(cal.digests_received for cal in cals)
                pending_ots = await export_ots(store, sample[0])
                cals[0].confirm()
                report = await anchorer.upgrade()
                assert report.confirmed == (outcome.batch_id,)
            times = []
            for _ in range(EXPORTS):
                t0 = time.perf_counter()
                ots = await export_ots(store, sample[0])
                times.append(time.perf_counter() - t0)
            headers = dict(enumerate(chain.headers))
            record = await store.get_record(sample[0])
            assert verify_ots(record.body, ots, headers, regtest=True).ok
            own = 31 + 1 + 1 + 32 + 18 + 1 + 35 * len(merkle.sibling_positions(n, 0))  # header, nonce, path
            db_mb = sum(f.stat().st_size for f in (Path(tmp) / "data").glob("estampille.sqlite3*")) / 2**20
        finally:
            for server in (*cals, node):
                await server.stop()
            await store.close()
    return {
        "n": n, "insert_s": insert_s, "batch_s": batch_s, "batch_cpu_s": batch_cpu_s, "load": os.getloadavg()[0], "baseline_s": base_s, "rss_mb": rss,
        "export_ms": statistics.median(times) * 1000, "ots_bytes": len(ots), "own_bytes": own,
        "pending_ots_bytes": len(pending_ots), "requests_per_calendar": requests, "db_mb": db_mb,
    }


async def burst() -> dict:
    """Submission, retry and upgrade rounds of a burst's batches, calendars answering after BURST_DELAY."""
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "data")
        chain = FakeChain()
        cals = [FakeCalendar(chain) for _ in range(3)]
        for cal in cals:
            await cal.start()
            cal.delay = BURST_DELAY
        node = await BitcoindFake(chain).start()
        try:
            await insert_leaves(store, BURST)
            now = [time.time()]
            config = AnchorConfig(calendars=[c.url for c in cals], allowlist=[], http_for_tests=True, bitcoind=node.url,
                                  regtest=True)
            cals[0].down = cals[1].down = True  # the first submission stays 'submitting': the retry has work
            async with Anchorer(store, config, clock=lambda: now[0]) as anchorer:
                t0 = time.perf_counter()
                batches = len(await anchorer.batch_all())
                submit_s = time.perf_counter() - t0
                cals[0].down = cals[1].down = False
                now[0] += config.retry_first
                t0 = time.perf_counter()
                retried = await anchorer.retry_submissions()
                retry_s = time.perf_counter() - t0
                assert len(retried) == batches and {o.state for o in retried} == {"pending"}
                for cal in cals:
                    cal.confirm()
                t0 = time.perf_counter()
                report = await anchorer.upgrade()
                upgrade_s = time.perf_counter() - t0
                assert len(report.confirmed) == batches
        finally:
            for server in (*cals, node):
                await server.stop()
            await store.close()
    return {
        "batches": batches, "submit_s": submit_s, "retry_s": retry_s, "upgrade_s": upgrade_s,
        "peak_in_flight": max(cal.peak_in_flight for cal in cals), "cap": config.calendar_concurrency,
    }


async def tokens() -> dict:
    """One submission round of TSA_RECORDS records without a TSA (baseline), then with one."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        pki = TSAPki.make(Path(tmp) / "pki")
        async with FakeCalendar(FakeChain()) as cal, LocalTSA(pki) as tsa:
            config = AnchorConfig(calendars=[cal.url], min_calendars=1, allowlist=[], http_for_tests=True)
            authority = TSAAuthority(name="local", url=tsa.url, ca_files=[str(pki.ca_pem)])
            for name, tsa_config in (("baseline", None), ("tsa", TSAConfig(authorities=[authority]))):
                store = await Store.open(Path(tmp) / name)
                try:
                    await insert_leaves(store, TSA_RECORDS)
                    async with Anchorer(store, config, tsa=tsa_config) as anchorer:
                        t0 = time.perf_counter()
                        batches = len(await anchorer.batch_all())
                        out[f"{name}_s"] = time.perf_counter() - t0
                        stamped = await store.fetchone("SELECT COUNT(*) FROM tsa_tokens WHERE state = 'stamped'")
                finally:
                    await store.close()
            out.update(batches=batches, requests=tsa.requests, stamped=stamped[0])
    return out


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child modes
    parser.add_argument("--burst", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tokens:
        print(json.dumps(asyncio.run(tokens())))
        return 0
    if args.one:
        print(json.dumps(asyncio.run(one_size(args.one))))
        return 0
    if args.burst:
        print(json.dumps(asyncio.run(burst())))
        return 0
    default_batch = AnchorConfig().max_batch
    results = {}
    for n in sorted({default_batch, *(int(s) for s in args.sizes.split(","))}):
        r = results[n] = child("--one", str(n))
        print(
            f"{n:>9} leaves: batch+persist {r['batch_s']:.2f} s, CPU {r['batch_cpu_s']:.2f} s, load {r['load']:.1f}"
            f" (baseline hash+insert {r['baseline_s']:.2f} s,"
            f" ratio {r['batch_s'] / r['baseline_s']:.1f}x), peak RSS {r['rss_mb']:.0f} MB,"
            f" inserting the records {r['insert_s']:.1f} s, database {r['db_mb']:.0f} MB;"
            f" export one .ots {r['export_ms']:.2f} ms; proof {r['pending_ots_bytes']} B pending,"
            f" {r['ots_bytes']} B after the Bitcoin upgrade (ours {r['own_bytes']} B);"
            f" {r['requests_per_calendar']} request(s) per calendar"
            + (" [the default anchor.max_batch]" if n == default_batch else ""),
            flush=True,
        )
    b = child("--burst")
    print(
        f"burst of {BURST} records: {b['batches']} batches of up to {default_batch}, calendars answering after"
        f" {BURST_DELAY} s: submission round {b['submit_s']:.2f} s, retry round {b['retry_s']:.2f} s, upgrade round"
        f" {b['upgrade_s']:.2f} s (one batch at a time: {b['batches'] * BURST_DELAY:.2f} s each);"
        f" at most {b['peak_in_flight']} request(s) in flight to one calendar (anchor.calendar_concurrency {b['cap']})",
        flush=True,
    )
    t = child("--tokens")
    print(
        f"RFC 3161 tokens: {TSA_RECORDS} records in {t['batches']} batches, {t['requests']} request(s) to the TSA,"
        f" {t['stamped']} token(s) stored; submission round {t['tsa_s']:.2f} s with the TSA, {t['baseline_s']:.2f} s"
        f" without (x{t['tsa_s'] / t['baseline_s']:.2f})",
        flush=True,
    )
    top = results[max(results)]
    print(
        f"RESULT batch_1e6_s={top['batch_s']:.2f} batch_1e6_rss_mb={top['rss_mb']:.0f}"
        f" ots_bytes={results[default_batch]['ots_bytes']}"
        f" requests_per_calendar={max(r['requests_per_calendar'] for r in results.values())}"
        f" ots_bytes_1e6={top['ots_bytes']}"
        f" burst_round_s={max(b['submit_s'], b['retry_s'], b['upgrade_s']):.2f}"
        f" tsa_requests_per_batch={t['requests'] / t['batches']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
