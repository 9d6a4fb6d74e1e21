"""Throughput of the relay against a naive store-and-forward baseline, in one run.

Each system under test runs in its own subprocess (so the peak RSS reported is
the relay's own), one after the other, in front of the same recording sink
(another subprocess). This process is the load: CLIENTS connections, each
sending its share of MESSAGES messages of about 9 KB to RECIPIENTS recipients.

    python bench/relay_bench.py [--messages 300] [--clients 4] [--recipients 10] [--rounds 3]

Each round measures every system once, in turn; the figures are each system's medians over
the rounds. Prints, per system and round, then the medians: accepted messages/s, delivered recipients/s, p50 and p99
time to the 250, peak RSS; then the ratios relay/baseline; then what certification
costs (bench/certify_bench.py): the cost per delivery of each stage (rewrite, sign,
store, send) and, for one 2 MB message to RECIPIENTS recipients through the relay,
the time until all are delivered and the peak RSS; and last:
``RESULT accepted_ratio=... delivered_ratio=... p99_ms=... rss_mb=... certified_ratio=...
certified_accepted_ratio=... big_seconds=... big_rss_mb=... uvloop_baseline_delivered_ratio=...
uvloop_baseline_certified_ratio=... dsn_delivered_ratio=... dsn_cpu_ratio=...``.

Two goals, two systems. The relay core's (issue 2: "at least as fast as the naive relay,
before certification"): accepted_ratio and delivered_ratio, with p99_ms and rss_mb, are
those of ``relay-core``, the relay with the certify step bypassed, goal >= 1.0 each.
Certification's (issue 3): certified_ratio is the certifying relay's (``relay``) delivered
recipients/s over the baseline's, goal >= 0.8; certified_accepted_ratio is its accepted
messages/s over the baseline's, for information.

What asking for delivery status reports costs (issue 27): dsn_delivered_ratio is the delivered
recipients/s of ``relay-dsn`` (the relay with ``[dsn] bounce_domain`` set: a return token
stored with each copy, and the DSN parameters, which the sink does not offer) over the relay's;
dsn_cpu_ratio, the CPU time the relay-dsn process used for the same load over the relay's (on a
shared machine the steadier of the two).

The relay runs on uvloop (as `estampille serve` does); the baseline, the naive relay, on
asyncio's default loop. ``baseline-uvloop`` is that same baseline on uvloop, measured for
information: the uvloop_baseline_* ratios show how much of the margin is the loop's.

To add a system (e.g. the relay with certification), add a ``System`` to
``systems()``: a name and the command that starts it, which must print
``listening on 127.0.0.1:PORT`` on stderr and forward to the sink.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import certify_bench

from relay.config import UpstreamConfig

HERE = Path(__file__).resolve().parent
MESSAGE_OCTETS = 9 * 1024
START_SECONDS = 30.0
DELIVERY_DEADLINE_SECONDS = 30.0  # per system: the whole run stays under two minutes


@dataclass(frozen=True)
class System:
    name: str
    command: list[str]  # {sink_port} and {work} are substituted


@dataclass(frozen=True)
class Figures:
    name: str
    accepted_per_s: float
    delivered_per_s: float
    p50_ms: float
    p99_ms: float
    rss_mb: float
    cpu_s: float
    delivered: int
    expected: int


def systems(work: Path) -> list[System]:
    relay = [sys.executable, str(HERE / "bench_relay.py"), "--sink-port", "{sink_port}", "--work", "{work}"]
    baseline = [sys.executable, str(HERE / "baseline.py"), "--sink-port", "{sink_port}", "--spool", "{work}"]
    return [
        System("relay", relay),
        System("relay-core", [*relay, "--uncertified"]),
        System("relay-dsn", [*relay, "--bounce-domain", "bounces.example.org"]),
        System("baseline", baseline),
        System("baseline-uvloop", [*baseline, "--uvloop"]),
    ]


def make_message(number: int, recipients: list[str], octets: int = MESSAGE_OCTETS) -> bytes:
    head = (
        f"From: Mairie <mairie@example.org>\r\nTo: {', '.join(recipients)}\r\n"
        f"Subject: Convocation au conseil municipal n{number}\r\n"
        f"Message-ID: <bench-{number}@example.org>\r\nDate: Mon, 02 Mar 2026 10:00:00 +0100\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    line = "Vous etes convoque a la seance du conseil municipal du lundi 9 mars a 18 h 30.\r\n"
    body = line * ((octets - len(head)) // len(line))
    return (head + body).encode()


class Process:
    """A subprocess whose stderr goes to a file; ``port`` is read from its 'listening on' line.

    A file, not a pipe this process reads: this process is also the SMTP load, and reading
    the relay's log lines as they come (one per delivery) took its time from sending, which
    the silent baseline never cost it. The relay still writes every line."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.port = asyncio.get_running_loop().create_future()

    @classmethod
    async def start(cls, command: list[str], log: Path) -> Process:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err
            )
        started = cls(proc, log)
        deadline = time.monotonic() + START_SECONDS
        while not started.port.done():
            found = re.search(rb"listening on 127\.0\.0\.1:(\d+)", log.read_bytes())
            if found:
                started.port.set_result(int(found.group(1)))
            elif proc.returncode is not None or time.monotonic() > deadline:
                await started.stop()
                raise RuntimeError(log.read_bytes()[-2000:].decode(errors="replace"))
            else:
                await asyncio.sleep(0.05)
        return started

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by this process (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def ask(self, line: str, timeout: float) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), timeout))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def client(port: int, messages: list[tuple[list[str], bytes]], latencies: list[float]) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
    await smtp.connect()
    for recipients, data in messages:
        started = time.monotonic()
        await smtp.sendmail("mairie@example.org", recipients, data)
        latencies.append(time.monotonic() - started)
    await smtp.quit()


async def measure(system: System, args: argparse.Namespace, work: Path, octets: int = MESSAGE_OCTETS) -> Figures:
    expected = args.messages * args.recipients
    sink = await Process.start([sys.executable, str(HERE / "sink.py")], work / f"{system.name}-sink.log")
    sut = None
    try:
        values = {"sink_port": str(sink.port.result()), "work": str(work / system.name)}
        sut = await Process.start([part.format(**values) for part in system.command], work / f"{system.name}.log")
        batches: list[list[tuple[list[str], bytes]]] = [[] for _ in range(args.clients)]
        for n in range(args.messages):
            recipients = [f"conseiller{n}.{r}@example.net" for r in range(args.recipients)]
            batches[n % args.clients].append((recipients, make_message(n, recipients, octets)))
        latencies: list[float] = []
        started = time.monotonic()
        await asyncio.gather(*(client(sut.port.result(), batch, latencies) for batch in batches))
        accepted_s = time.monotonic() - started
        report = await sink.ask(f"wait {expected} {DELIVERY_DEADLINE_SECONDS}", DELIVERY_DEADLINE_SECONDS + 10)
        delivered_s = report["last"] - started
        rss = sut.peak_rss_mb()
        cpu = sut.cpu_seconds()
    finally:
        if sut is not None:
            await sut.stop()
        await sink.stop()
    latencies.sort()
    return Figures(
        name=system.name,
        accepted_per_s=args.messages / accepted_s,
        delivered_per_s=report["count"] / delivered_s if delivered_s > 0 else 0.0,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        rss_mb=rss,
        cpu_s=cpu,
        delivered=report["count"],
        expected=expected,
    )


def median_figures(runs: list[Figures]) -> Figures:
    """One system's rounds as one: the median of each rate and latency, the highest peak RSS.

    The machine is shared and noisy: rounds alternate between the systems, so a slow spell
    falls on all of them, and the median drops the round it spoiled most."""
    return Figures(
        name=runs[0].name,
        accepted_per_s=statistics.median(f.accepted_per_s for f in runs),
        delivered_per_s=statistics.median(f.delivered_per_s for f in runs),
        p50_ms=statistics.median(f.p50_ms for f in runs),
        p99_ms=statistics.median(f.p99_ms for f in runs),
        rss_mb=max(f.rss_mb for f in runs),
        cpu_s=statistics.median(f.cpu_s for f in runs),
        delivered=min(f.delivered for f in runs),
        expected=runs[0].expected,
    )


def show(f: Figures) -> None:
    print(
        f"{f.name:>15}: accepted {f.accepted_per_s:7.1f} msg/s, delivered {f.delivered_per_s:7.1f} rcpt/s "
        f"({f.delivered}/{f.expected}), time to 250 p50 {f.p50_ms:6.1f} ms p99 {f.p99_ms:6.1f} ms, "
        f"peak RSS {f.rss_mb:6.1f} MB, CPU {f.cpu_s:5.1f} s",
        flush=True,
    )


async def certification_costs(args: argparse.Namespace, work: Path) -> Figures:
    """Print the cost per delivery of each certify stage, then send one big message through the relay."""
    sink = await Process.start([sys.executable, str(HERE / "sink.py")], work / "stages-sink.log")
    try:
        costs = await certify_bench.stage_costs(sink.port.result(), work / "stages", make_message,
                                                messages=20, recipients=args.recipients)
    finally:
        await sink.stop()
    print(f"{costs.line()} ({costs.deliveries} deliveries, one at a time)", flush=True)
    relay = next(s for s in systems(work) if s.name == "relay")
    big_args = argparse.Namespace(messages=1, clients=1, recipients=args.recipients)
    big = await measure(relay, big_args, work / "big", octets=certify_bench.BIG_OCTETS)
    in_flight = min(UpstreamConfig().concurrency, args.recipients)  # concurrent deliveries of that one message
    goal = certify_bench.rss_goal_mb(certify_bench.BIG_OCTETS, in_flight)
    print(f"{certify_bench.BIG_OCTETS / 2**20:.0f} MB message to {args.recipients} recipients: all delivered in "
          f"{big.delivered / big.delivered_per_s if big.delivered_per_s else float('inf'):.2f} s "
          f"({big.delivered}/{big.expected}), peak RSS {big.rss_mb:.1f} MB (goal: below {goal:.0f} MB)", flush=True)
    return big


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--recipients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3,
                        help="each system is measured once per round, in turn; the figures are the medians")
    parser.add_argument("--only", metavar="NAME", help="measure one system alone (for profiling); no ratios")
    args = parser.parse_args()
    print(f"{args.messages} messages of {MESSAGE_OCTETS} octets, {args.recipients} recipients each, "
          f"{args.clients} client connections, {os.cpu_count()} CPUs, {args.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory(prefix="estampille-bench-") as tmp:
        runs: dict[str, list[Figures]] = {}
        for n in range(args.rounds):
            for system in systems(Path(tmp)):
                if args.only in (None, system.name):
                    runs.setdefault(system.name, []).append(await measure(system, args, Path(tmp) / f"round{n}"))
                    show(runs[system.name][-1])
        if args.only:
            return 0
        big = await certification_costs(args, Path(tmp))
    results = {name: median_figures(figures) for name, figures in runs.items()}
    print(f"medians of {args.rounds} rounds:")
    for figures in results.values():
        show(figures)
    baseline, uv_baseline = results["baseline"], results["baseline-uvloop"]
    for name in ("relay-core", "relay"):
        f = results[name]
        for base in (baseline, uv_baseline):
            print(f"ratios {name}/{base.name}: accepted {f.accepted_per_s / base.accepted_per_s:.2f}, "
                  f"delivered {f.delivered_per_s / base.delivered_per_s:.2f}")
    core, certified = results["relay-core"], results["relay"]
    big_seconds = big.delivered / big.delivered_per_s if big.delivered_per_s else float("inf")
    print(
        f"RESULT accepted_ratio={core.accepted_per_s / baseline.accepted_per_s:.2f} "
        f"delivered_ratio={core.delivered_per_s / baseline.delivered_per_s:.2f} "
        f"p99_ms={core.p99_ms:.1f} rss_mb={core.rss_mb:.1f} "
        f"certified_ratio={certified.delivered_per_s / baseline.delivered_per_s:.2f} "
        f"certified_accepted_ratio={certified.accepted_per_s / baseline.accepted_per_s:.2f} "
        f"big_seconds={big_seconds:.2f} big_rss_mb={big.rss_mb:.1f} "
        f"uvloop_baseline_delivered_ratio={core.delivered_per_s / uv_baseline.delivered_per_s:.2f} "
        f"uvloop_baseline_certified_ratio={certified.delivered_per_s / uv_baseline.delivered_per_s:.2f} "
        f"dsn_delivered_ratio={results['relay-dsn'].delivered_per_s / certified.delivered_per_s:.2f} "
        f"dsn_cpu_ratio={results['relay-dsn'].cpu_s / certified.cpu_s:.2f}"
    )
    complete = all(f.delivered == f.expected for f in [*results.values(), big])
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
