"""Soak: `estampille serve` under a steady load for a long time, its memory and open files sampled.

    python bench/soak.py [--minutes 30] [--measure-seconds 20] [--clients 8]

First the maximum rate is measured briefly (messages of 3 recipients sent as fast as
CLIENTS connections can, divided by the time until every copy reached the sink), then
the load runs at half that rate for MINUTES. The relay (certifying, tracker on,
anchoring to a local calendar) forwards to the test sink.
Every SAMPLE_SECONDS the relay process's RSS (/proc/PID/status VmRSS) and open file
descriptors (/proc/PID/fd) are sampled. After the warm-up (the first fifth of the run,
at least one minute), growth is the mean of the last three samples against the mean
of the first three. Goal: under 10 %. Last line:
``RESULT rss_growth_pct=... fds_growth_pct=... rate_per_s=...``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.calendar import FakeCalendar, FakeChain
from tests.support.crashrun import RECIPIENTS, SENDER, crash_config, message
from tests.support.served import Relay
from tests.support.sink import Sink, free_port

SAMPLE_SECONDS = 10.0
MIN_WARMUP_SECONDS = 60.0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Load:
    """CLIENTS persistent connections sending numbered messages; ``sent`` counts 250s."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.clients = clients
        self.sent = 0
        self.failed = 0
        self.numbers = itertools.count()

    async def client(self, tickets: asyncio.Queue[None] | None, until: float) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=30)
        await smtp.connect()
        try:
            while time.monotonic() < until:
                if tickets is not None:
                    try:
                        await asyncio.wait_for(tickets.get(), max(0.01, until - time.monotonic()))
                    except TimeoutError:
                        break
                try:
                    await smtp.sendmail(SENDER, list(RECIPIENTS), message(next(self.numbers)))
                    self.sent += 1
                except aiosmtplib.SMTPException:
                    self.failed += 1
        finally:
            smtp.close()

    async def run(self, seconds: float, rate: float | None = None) -> None:
        until = time.monotonic() + seconds
        tickets: asyncio.Queue[None] | None = asyncio.Queue() if rate else None
        tasks = [asyncio.create_task(self.client(tickets, until)) for _ in range(self.clients)]
        if tickets is not None and rate:
            start = time.monotonic()
            for n in itertools.count():
                due = start + n / rate
                if due >= until:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if tickets.qsize() < self.clients * 4:  # the relay fell behind: do not pile up
                    tickets.put_nowait(None)
        await asyncio.gather(*tasks)


async def soak(minutes: float, measure_seconds: float, clients: int) -> None:
    chain = FakeChain()
    with tempfile.TemporaryDirectory(prefix="estampille-soak-") as work:
        async with Sink() as sink, FakeCalendar(chain) as calendar:
            config = crash_config(Path(work), free_port(), sink.port, calendar.url)
            relay = await Relay.start(config)
            pid = relay.proc.pid
            try:
                load = Load(relay.port.result(), clients)
                max_rate = await measure(load, sink, measure_seconds)
                rate = max_rate / 2
                print(f"maximum rate: {max_rate:.1f} messages/s of 3 recipients; soak at {rate:.1f}/s "
                      f"for {minutes:g} min", flush=True)
                samples: list[tuple[float, int, int]] = []
                load.sent = 0
                soak_task = asyncio.create_task(load.run(minutes * 60, rate))
                started = time.monotonic()
                delivered_before = len(sink.messages)
                delivered = 0
                while not soak_task.done():
                    await asyncio.wait([soak_task], timeout=SAMPLE_SECONDS)
                    delivered += len(sink.messages) - delivered_before
                    if soak_task.done():
                        break  # the load has stopped: its connections are gone, not a fair sample
                    sink.messages.clear()  # the sink's memory is not under test
                    sink.attempts.clear()
                    delivered_before = 0
                    sample = (time.monotonic() - started, rss_kb(pid), open_fds(pid))
                    samples.append(sample)
                    print(f"t={sample[0]:7.1f}s rss={sample[1] / 1024:7.1f}MB fds={sample[2]:4d} "
                          f"sent={load.sent} delivered={delivered} failed={load.failed}", flush=True)
                await soak_task
            finally:
                relay.proc.send_signal(signal.SIGTERM)
                code = await relay.wait()
            print(f"relay exit code on SIGTERM: {code}")
    report(samples, minutes * 60, load.sent / (minutes * 60), delivered)


async def measure(load: Load, sink: Sink, seconds: float) -> float:
    """End-to-end maximum: messages sent as fast as possible for ``seconds``, divided by the
    time until every copy reached the sink (accepting alone runs ahead of delivery)."""
    started = time.monotonic()
    await load.run(seconds)
    deadline = time.monotonic() + 10 * seconds
    while len(sink.messages) < load.sent * len(RECIPIENTS) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    print(f"measure: {load.sent} messages accepted in {seconds:g}s, all {len(sink.messages)} copies "
          f"delivered after {elapsed:.1f}s", flush=True)
    sink.messages.clear()
    sink.attempts.clear()
    return load.sent / elapsed


def report(samples: list[tuple[float, int, int]], seconds: float, rate: float, delivered: int) -> None:
    warmup = max(MIN_WARMUP_SECONDS, seconds / 5)
    after = [s for s in samples if s[0] >= warmup] or samples[-3:]
    first, last = after[:3], after[-3:]

    def growth(index: int) -> float:
        a = statistics.mean(s[index] for s in first)
        b = statistics.mean(s[index] for s in last)
        return 100.0 * (b - a) / a

    print(f"after warm-up ({warmup:.0f}s): rss {first[0][1] / 1024:.1f} -> {last[-1][1] / 1024:.1f} MB, "
          f"fds {first[0][2]} -> {last[-1][2]}; peak rss {max(s[1] for s in samples) / 1024:.1f} MB; "
          f"copies delivered {delivered}")
    print(f"RESULT rss_growth_pct={growth(1):.1f} fds_growth_pct={growth(2):.1f} rate_per_s={rate:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--measure-seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(soak(args.minutes, args.measure_seconds, args.clients))
    return 0


if __name__ == "__main__":
    sys.exit(main())
