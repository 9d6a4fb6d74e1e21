"""What certification costs, for bench/relay_bench.py.

``stage_costs``: the relay's own delivery path (Deliverer._deliver) run in this
process, one delivery at a time, on 9 KB messages to 10 recipients, with timers
wrapped around its stages: rewrite (certify's MIME and link work: prepare, shared
by a message's recipients, plus copy, minus signing), sign (both DKIM signatures),
store (the copy file, its delivery record and tokens, committed before sending,
thread hand-off included) and send (the upstream transaction). Per delivery, the
CPU milliseconds of the whole process (nothing else runs in it meanwhile: the sink
is another process) and, in parentheses, the wall-clock ones: store's wall time is
mostly the group commit's wait for company (Store.write, urgent=False) and its fsync.

``BIG_OCTETS``: the size of the large message relay_bench sends to 10 recipients
through the relay, to report the time until all are delivered and the peak RSS
against its goal: 100 MB plus three times the message size per concurrent delivery.

Run alone, the certify step over the corpus (tests/corpus, two copies per message),
in this process, against signing alone on the same bytes as the baseline:

    python bench/certify_bench.py [--rounds 5]

prints the copies that carry an acknowledgment link (goal: all), the cost per copy,
and ``RESULT linked_ratio=... certify_ms=... sign_ms=... certify_over_sign=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.certify import certifier as certify
from relay.certify import dkim
from relay.certify.acklink import AckTemplates
from relay.config import AckConfig, Config, DeliveryConfig, DKIMConfig, SMTPConfig, TrackerConfig, UpstreamConfig
from relay.outbound import deliver
from relay.smtp.spool import Incoming
from relay.store import Store

BIG_OCTETS = 2 * 2**20
RSS_BASE_MB = 100.0
RSS_PER_DELIVERY_FACTOR = 3  # times the message size, per concurrent delivery
STAGES = ("rewrite", "sign", "store", "send")
SENDER = "mairie@example.org"


@dataclass(frozen=True)
class StageCosts:
    deliveries: int
    cpu_ms: dict[str, float]  # stage -> CPU milliseconds per delivery
    wall_ms: dict[str, float]  # stage -> wall-clock milliseconds per delivery

    def line(self) -> str:
        return "cost per delivery, CPU (wall): " + ", ".join(
            f"{s} {self.cpu_ms[s]:.2f} ({self.wall_ms[s]:.2f}) ms" for s in STAGES)


def rss_goal_mb(octets: int, concurrency: int) -> float:
    return RSS_BASE_MB + RSS_PER_DELIVERY_FACTOR * octets / 2**20 * concurrency


@contextlib.contextmanager
def _timed(owner: Any, name: str, totals: dict[str, list[float]], key: str) -> Iterator[None]:
    """Wrap ``owner.name`` (sync or async) so that its wall and process CPU time add to ``totals[key]``."""
    original = getattr(owner, name)

    def add(wall: float, cpu: float) -> None:
        total = totals[key]
        total[0] += time.perf_counter() - wall
        total[1] += time.process_time() - cpu

    if asyncio.iscoroutinefunction(original):
        async def wrapper(*args: Any, **kw: Any) -> Any:
            started = time.perf_counter(), time.process_time()
            try:
                return await original(*args, **kw)
            finally:
                add(*started)
    else:
        def wrapper(*args: Any, **kw: Any) -> Any:  # type: ignore[misc]
            started = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kw)
            finally:
                add(*started)
    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _config(work: Path, sink_port: int) -> Config:
    entry = dkim.generate_keys(work / "keys", "example.org", "rsa", "ed")
    return Config(
        data_dir=str(work / "data"),
        smtp=SMTPConfig(hostname="bench.example.org"),
        upstream=UpstreamConfig(kind="smtp", host="127.0.0.1", port=sink_port, tls="none"),
        delivery=DeliveryConfig(),
        dkim=DKIMConfig(domains=[entry]),
        ack=AckConfig(),
        tracker=TrackerConfig(enabled=False, public_url="https://ack.example.org"),
    )


async def stage_costs(
    sink_port: int, work: Path, make_message: Callable[[int, list[str]], bytes], messages: int, recipients: int
) -> StageCosts:
    config = _config(work, sink_port)
    store = await Store.open(config.data_path)
    deliverer = deliver.Deliverer(config, store)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # key -> [wall, cpu] seconds
    count = 0
    try:
        for n in range(messages):
            rcpts = [f"conseiller{n}.{r}@example.net" for r in range(recipients)]
            incoming = Incoming(data=make_message(n, rcpts), mail_from=SENDER, recipients=tuple(rcpts),
                                client_address="127.0.0.1")
            await deliverer.spool.accept(incoming, time.time())
        with contextlib.ExitStack() as stack:
            stack.enter_context(_timed(certify.Certifier, "prepare", totals, "certify"))
            stack.enter_context(_timed(certify.Certifier, "copy", totals, "certify"))
            stack.enter_context(_timed(certify.dkim, "sign", totals, "sign"))
            stack.enter_context(_timed(deliverer, "_prepare", totals, "prepare"))
            stack.enter_context(_timed(deliverer, "_certify", totals, "certify_call"))
            stack.enter_context(_timed(deliverer.upstream, "send", totals, "send"))
            while rows := await store.claim_due(time.time(), recipients):
                for row in rows:
                    await deliverer._deliver(row)
                    count += 1
    finally:
        await deliverer.upstream.close()
        await store.close()

    def per_delivery(i: int) -> dict[str, float]:
        seconds = {
            "rewrite": totals["certify"][i] - totals["sign"][i],
            "sign": totals["sign"][i],
            "store": totals["prepare"][i] - totals["certify_call"][i],
            "send": totals["send"][i],
        }
        return {k: v * 1000 / max(1, count) for k, v in seconds.items()}

    return StageCosts(deliveries=count, cpu_ms=per_delivery(1), wall_ms=per_delivery(0))


# -- the certify step alone, over the corpus ------------------------------------

CORPUS_DIR = Path(__file__).resolve().parent.parent / "tests" / "corpus"
CORPUS_SENDER = "mairie@ville-exemple.fr"
CORPUS_RECIPIENTS = 2  # copies per message, as tests/unit/test_certify.py makes them


@dataclass(frozen=True)
class CorpusFigures:
    copies: int
    linked: int  # copies that carry an acknowledgment link
    certify_ms: float  # per copy: prepare (shared by a message's copies) plus copy, signing included
    sign_ms: float  # per copy, the baseline: the two DKIM signatures alone, on the same bytes

    @property
    def linked_ratio(self) -> float:
        return self.linked / self.copies


def corpus_figures(work: Path, rounds: int) -> CorpusFigures:
    """Certify every corpus message for CORPUS_RECIPIENTS recipients, ``rounds`` times."""
    entry = dkim.generate_keys(work / "keys", "ville-exemple.fr", "rsa", "ed")
    keyring = dkim.Keyring.from_config(DKIMConfig(domains=[entry]))
    ack = AckConfig()
    certifier = certify.Certifier(ack=ack, templates=AckTemplates.from_config(ack),
                                  public_url="https://ack.example.org", keyring=keyring)
    tokens = (f"{n:022d}" for n in itertools.count())
    messages = [path.read_bytes() for path in sorted(CORPUS_DIR.glob("*.eml"))]
    copies = linked = 0
    certify_s = sign_s = 0.0
    date = datetime(2026, 12, 1, tzinfo=UTC)
    for _ in range(rounds):
        for data in messages:
            started = time.perf_counter()
            prepared = certifier.prepare(data, mail_from=CORPUS_SENDER, date=date, message_id_local="bench")
            made = [certifier.copy(prepared, tokens=tokens.__next__, now=1_790_000_000)
                    for _ in range(CORPUS_RECIPIENTS)]
            certify_s += time.perf_counter() - started
            started = time.perf_counter()
            for _ in made:
                dkim.sign(prepared.data, prepared.keys, keyring.signed_headers, 1_790_000_000)
            sign_s += time.perf_counter() - started
            copies += len(made)
            linked += sum(c.ack_link_inserted for c in made)
    return CorpusFigures(copies=copies, linked=linked, certify_ms=certify_s * 1000 / copies,
                         sign_ms=sign_s * 1000 / copies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The certify step over tests/corpus: linked ratio and cost per copy.")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the corpus")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        f = corpus_figures(Path(work), args.rounds)
    print(f"{f.copies} copies of {f.copies // args.rounds // CORPUS_RECIPIENTS} corpus messages,"
          f" {f.linked} with an acknowledgment link")
    print(f"certify per copy {f.certify_ms:.2f} ms; signing alone (baseline) {f.sign_ms:.2f} ms"
          f" ({f.certify_ms / f.sign_ms:.2f}x)")
    print(f"RESULT linked_ratio={f.linked_ratio:.3f} certify_ms={f.certify_ms:.2f} sign_ms={f.sign_ms:.2f}"
          f" certify_over_sign={f.certify_ms / f.sign_ms:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
