"""What certification costs, for bench/relay_bench.py.

``stage_costs``: the relay's own delivery path (Deliverer._deliver) run in this
process, one delivery at a time, on 9 KB messages to 10 recipients, with timers
wrapped around its stages: rewrite (certify's MIME and link work: prepare, shared
by a message's recipients, plus copy, minus signing), sign (both DKIM signatures),
store (the copy file, its delivery record and tokens, committed before sending,
thread hand-off included) and send (the upstream transaction). Wall-clock
milliseconds per delivery.

``BIG_OCTETS``: the size of the large message relay_bench sends to 10 recipients
through the relay, to report the time until all are delivered and the peak RSS
against its goal: 100 MB plus three times the message size per concurrent delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay import certify, deliver, dkim
from relay.config import AckConfig, Config, DeliveryConfig, DKIMConfig, SMTPConfig, TrackerConfig, UpstreamConfig
from relay.spool import Incoming
from relay.store import Store

BIG_OCTETS = 2 * 2**20
RSS_BASE_MB = 100.0
RSS_PER_DELIVERY_FACTOR = 3  # times the message size, per concurrent delivery
STAGES = ("rewrite", "sign", "store", "send")
SENDER = "mairie@example.org"


@dataclass(frozen=True)
class StageCosts:
    deliveries: int
    ms: dict[str, float]  # stage -> milliseconds per delivery

    def line(self) -> str:
        return "cost per delivery: " + ", ".join(f"{s} {self.ms[s]:.2f} ms" for s in STAGES)


def rss_goal_mb(octets: int, concurrency: int) -> float:
    return RSS_BASE_MB + RSS_PER_DELIVERY_FACTOR * octets / 2**20 * concurrency


@contextlib.contextmanager
def _timed(owner: Any, name: str, totals: dict[str, float], key: str) -> Iterator[None]:
    """Wrap ``owner.name`` (sync or async) so that its wall time adds to ``totals[key]``."""
    original = getattr(owner, name)
    if asyncio.iscoroutinefunction(original):
        async def wrapper(*args: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kw)
            finally:
                totals[key] += time.perf_counter() - started
    else:
        def wrapper(*args: Any, **kw: Any) -> Any:  # type: ignore[misc]
            started = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                totals[key] += time.perf_counter() - started
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
    totals: dict[str, float] = defaultdict(float)
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
                    await deliverer._deliver(deliver.Job.from_row(row))
                    count += 1
    finally:
        await deliverer.upstream.close()
        await store.close()
    ms = {
        "rewrite": totals["certify"] - totals["sign"],
        "sign": totals["sign"],
        "store": totals["prepare"] - totals["certify_call"],
        "send": totals["send"],
    }
    return StageCosts(deliveries=count, ms={k: v * 1000 / max(1, count) for k, v in ms.items()})
