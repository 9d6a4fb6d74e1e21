"""/metrics on the admin address: the figures exist and move as the relay
accepts, delivers, defers (the upstream answers 451), refuses and is acknowledged."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import smtplib
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from relay.store import Store
from tests.integration.test_relay import message, smtplib_send
from tests.support.relay import relay_config, running
from tests.support.sink import Sink, free_port

WAIT_SECONDS = 20.0
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
EXPOSED = (
    "estampille_deliveries", "estampille_delivery_attempts", "estampille_oldest_deferred_age_seconds",
    "estampille_anchor_leaves_pending", "estampille_anchor_oldest_leaf_age_seconds",
    "estampille_anchor_batches_pending", "estampille_anchor_oldest_batch_age_seconds",
    "estampille_acknowledgments", "estampille_ack_page_fetches", "estampille_smtp_error_replies",
    "estampille_http_error_responses", "estampille_deliveries_held",
)


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """Every sample as 'name{label="value"}' -> value."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: dict[str, float] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    samples["__families__"] = families  # type: ignore[assignment]
    return samples


async def until(http: aiohttp.ClientSession, port: int, wanted: dict[str, float]) -> dict[str, float]:
    """Scrape until every sample in ``wanted`` has its value (bounded)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        got = await scrape(http, port)
        if all(got.get(name) == value for name, value in wanted.items()):
            return got
        assert time.monotonic() < deadline, {name: got.get(name) for name in wanted}
        await asyncio.sleep(0.05)


def refused_command(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.docmd("EXPN", "staff")[0]


async def add_token(store: Store, recipient: str) -> str:
    """An acknowledgment link for the delivery to ``recipient`` (what certify inserts in the copy)."""
    row = await store.fetchone("SELECT id FROM deliveries WHERE recipient = ?", (recipient,))
    token = secrets.token_urlsafe(16)
    async with store.transaction() as db:
        await Store.insert_ack_token(db, token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                                     delivery_id=row["id"], target_url=None, now=time.time())
    return token


async def test_metrics_move_as_the_relay_works(tmp_path):
    metrics_port = free_port()
    async with Sink() as sink:
        sink.reply = lambda envelope: "451 4.3.0 busy, try later" if "busy@" in envelope.rcpt_tos[0] else None
        config = relay_config(
            tmp_path, sink.port,
            tracker={"enabled": True, "listen_port": 0},
            admin={"metrics_listen_host": "127.0.0.1", "metrics_listen_port": metrics_port},
        )
        async with running(config) as service, aiohttp.ClientSession() as http:
            assert service.metrics_port == metrics_port
            before = await scrape(http, metrics_port)
            assert set(EXPOSED) <= before["__families__"]
            assert before['estampille_deliveries{state="delivered"}'] == 0
            assert before["estampille_oldest_deferred_age_seconds"] == 0

            await asyncio.to_thread(smtplib_send, service.smtp_port, "mairie@example.org",
                                    ["elu@example.net", "busy@example.net"], message())
            assert await asyncio.to_thread(refused_command, service.smtp_port) == 502
            after = await until(http, metrics_port, {
                'estampille_deliveries{state="delivered"}': 1,
                'estampille_deliveries{state="deferred"}': 1,
                'estampille_smtp_error_replies_total{code="502"}': 1,
            })
            assert after['estampille_delivery_attempts_total{outcome="delivered"}'] == 1
            assert after['estampille_delivery_attempts_total{outcome="deferred"}'] >= 1
            assert after["estampille_oldest_deferred_age_seconds"] > 0
            # Anchoring is off here: the submission, delivery and hand-off records wait for a batch.
            assert after["estampille_anchor_leaves_pending"] >= 5
            assert after["estampille_anchor_oldest_leaf_age_seconds"] > 0
            assert after["estampille_anchor_batches_pending"] == 0
            assert after["estampille_deliveries_held"] == 0  # a deferral is not a hold

            token = await add_token(service.store, "elu@example.net")
            base = f"http://127.0.0.1:{service.tracker.port}"
            async with http.get(f"{base}/a/{token}", headers={"User-Agent": BROWSER}) as page:
                form_key = re.search(r'name="form_key" value="([0-9a-f]+)"', await page.text()).group(1)
            async with http.post(f"{base}/a/{token}", data={"form_key": form_key},
                                 headers={"User-Agent": BROWSER}) as posted:
                assert posted.status == 200
            async with http.get(f"{base}/a/no-such-token") as missing:
                assert missing.status == 404
            acked = await until(http, metrics_port, {
                "estampille_acknowledgments_total": 1,
                'estampille_http_error_responses_total{status="404"}': 1,
            })
            fetches = sum(v for k, v in acked.items() if k.startswith("estampille_ack_page_fetches_total{"))
            assert fetches == 1  # the GET, classified (scanner or person); the POST is the receipt
