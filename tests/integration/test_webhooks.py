"""Webhooks: signed, in order, durable across a receiver outage."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web

from relay.backoff import Backoff
from relay.config import WebhooksConfig
from relay.ops.webhooks import SIGNATURE_HEADER, WebhookWorker, signature_ok
from relay.store import Store
from tests.support.polling import until

SECRET = "s3cret-for-tests"
DEADLINE = 10.0


class Receiver:
    """A local webhook receiver that checks the HMAC of every request."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.bad_signatures = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not signature_ok(SECRET, body, request.headers.get(SIGNATURE_HEADER)):
            self.bad_signatures += 1
            return web.Response(status=401)
        self.events.append(json.loads(body))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    if r.runner is not None:
        await r.runner.cleanup()


async def enqueue(store: Store, events: list[tuple[str, dict]]) -> None:
    async with store.transaction() as db:
        for event, payload in events:
            await store.enqueue_event(db, event, payload, time.time())


EVENTS = [
    ("accepted", {"message_id": "<m1@example.org>", "recipients": 3}),
    ("delivered", {"recipient": "a@example.net"}),
    ("deferred", {"recipient": "b@example.net"}),
    ("acknowledged", {"recipient": "a@example.net"}),
    ("confirmed", {"bitcoin_height": 101}),
]


async def test_events_arrive_signed_and_in_order(tmp_path, receiver):
    store = await Store.open(tmp_path)
    store.webhook_urls = (receiver.url,)
    worker = WebhookWorker(store, WebhooksConfig(urls=[receiver.url], secret=SECRET), clock=time.time, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        await enqueue(store, EVENTS)
        await until(lambda: _count(receiver, len(EVENTS)), "all events")
    finally:
        task.cancel()
        await store.close()
    assert receiver.bad_signatures == 0
    assert [e["event"] for e in receiver.events] == [name for name, _ in EVENTS]
    assert [e["data"] for e in receiver.events] == [payload for _, payload in EVENTS]
    assert [e["id"] for e in receiver.events] == sorted(e["id"] for e in receiver.events)


async def test_wrong_secret_is_rejected_by_the_receiver_and_retried(tmp_path, receiver):
    store = await Store.open(tmp_path)
    store.webhook_urls = (receiver.url,)
    worker = WebhookWorker(store, WebhooksConfig(urls=[receiver.url], secret="not-the-secret"), clock=time.time,
                           backoff=Backoff(first=0.05, maximum=0.1), poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        await enqueue(store, EVENTS[:1])
        await until(lambda: _attempts(store, 2), "two attempts")
    finally:
        task.cancel()
    assert receiver.events == [] and receiver.bad_signatures >= 2
    row = await store.fetchone("SELECT state, last_error FROM webhook_events")
    assert (row["state"], row["last_error"]) == ("pending", "HTTP 401")
    await store.close()


async def test_receiver_down_events_retried_until_it_is_up(tmp_path, receiver):
    await receiver.stop()  # down: connections are refused
    store = await Store.open(tmp_path)
    store.webhook_urls = (receiver.url,)
    worker = WebhookWorker(store, WebhooksConfig(urls=[receiver.url], secret=SECRET), clock=time.time,
                           backoff=Backoff(first=0.05, maximum=0.2), poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        await enqueue(store, EVENTS)
        await until(lambda: _attempts(store, 3), "three failed attempts")
        assert receiver.events == []
        await receiver.start()  # same port: back up
        await until(lambda: _count(receiver, len(EVENTS)), "all events after the outage")
        # The receiver has the last event before the worker records it as sent: stopping the
        # worker at once would roll that write back.
        await until(lambda: _none_pending(store), "every event recorded as sent")
    finally:
        task.cancel()
    assert [e["event"] for e in receiver.events] == [name for name, _ in EVENTS]
    rows = await store.fetchall("SELECT state FROM webhook_events")
    assert {r["state"] for r in rows} == {"sent"}
    await store.close()


async def test_event_given_up_after_retry_for(tmp_path, receiver):
    await receiver.stop()
    store = await Store.open(tmp_path)
    store.webhook_urls = (receiver.url,)
    now = [1000.0]
    worker = WebhookWorker(store, WebhooksConfig(urls=[receiver.url], secret=SECRET, retry_for=60),
                           clock=lambda: now[0], backoff=Backoff(first=10, maximum=30))
    async with store.transaction() as db:
        await store.enqueue_event(db, "failed", {"recipient": "c@example.net"}, now[0])
    async with aiohttp.ClientSession() as session:
        while (await store.fetchone("SELECT state FROM webhook_events"))["state"] == "pending":
            await worker.send_due(session)
            now[0] += 30
            assert now[0] < 1200, "never given up"
    row = await store.fetchone("SELECT state, attempts FROM webhook_events")
    assert row["state"] == "failed" and row["attempts"] >= 3
    await store.close()


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.events) >= n


async def _none_pending(store: Store) -> bool:
    return await store.fetchone("SELECT 1 FROM webhook_events WHERE state = 'pending'") is None


async def _attempts(store: Store, n: int) -> bool:
    row = await store.fetchone("SELECT MAX(attempts) FROM webhook_events")
    return (row[0] or 0) >= n


async def test_the_relay_sends_every_event_of_a_message_in_order(tmp_path, receiver):
    from tests.support.proved import ACKNOWLEDGER, MESSAGE_ID, RECIPIENTS, proved_message

    webhooks = {"urls": [receiver.url], "secret": SECRET}
    async with proved_message(tmp_path, webhooks=webhooks) as p:
        await p.anchor()
        height = await p.confirm()
        await until(lambda: _has(receiver, "confirmed"), "the confirmation")
    assert receiver.bad_signatures == 0
    assert [e["id"] for e in receiver.events] == sorted(e["id"] for e in receiver.events)  # in commit order
    names = [e["event"] for e in receiver.events]
    assert sorted(names) == sorted(["accepted", "delivered", "delivered", "delivered", "fetched", "acknowledged",
                                    "anchored", "confirmed"]), names
    # Bob may open his link before the relay has recorded the upstream's 250: events follow commits.
    bob = [e["event"] for e in receiver.events if e["data"].get("recipient") == ACKNOWLEDGER]
    assert names[0] == "accepted" and sorted(bob) == ["acknowledged", "delivered", "fetched"], names
    assert bob.index("fetched") < bob.index("acknowledged"), bob
    assert names[-2:] == ["anchored", "confirmed"], names
    by_name = {e["event"]: e["data"] for e in receiver.events}
    assert by_name["accepted"]["message_id"] == MESSAGE_ID and by_name["accepted"]["recipients"] == RECIPIENTS
    assert {e["data"]["recipient"] for e in receiver.events if e["event"] == "delivered"} == set(RECIPIENTS)
    assert by_name["acknowledged"]["recipient"] == ACKNOWLEDGER
    assert by_name["fetched"]["classification"] == "person"
    assert by_name["confirmed"]["bitcoin_height"] == height


async def _has(receiver: Receiver, name: str) -> bool:
    return any(e["event"] == name for e in receiver.events)


async def test_old_sent_events_are_purged_pending_ones_kept(tmp_path):
    store = await Store.open(tmp_path)
    store.webhook_urls = ("http://127.0.0.1:9/hook",)
    async with store.transaction() as db:
        await store.enqueue_event(db, "accepted", {"n": 1}, 1000.0)
        await store.enqueue_event(db, "accepted", {"n": 2}, 1000.0)
    first = (await store.fetchone("SELECT MIN(id) FROM webhook_events"))[0]
    await store.finish_webhook_event(first, state="sent", next_attempt_at=1001.0, error=None)
    assert await store.purge_webhook_events(before=2000.0) == 1
    rows = await store.fetchall("SELECT state FROM webhook_events")
    assert [r["state"] for r in rows] == ["pending"]
    await store.close()
