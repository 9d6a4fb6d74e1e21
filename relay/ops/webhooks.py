"""Signed webhooks: events POSTed as JSON to the configured URLs, durably and in order.

Producers call ``Store.enqueue_event(db, event, payload, now)`` inside the
transaction that makes the change (accepted, delivered, deferred, failed,
fetched, acknowledged, anchored, confirmed, copy.unlinked), so an event exists if and only if
its change was committed. This worker sends them: per URL, oldest first, the
next one only once the previous one was taken (2xx) or given up after
``webhooks.retry_for`` seconds; failures are retried with doubling waits.

The body is canonical JSON ``{"id", "event", "created_at", "data"}``; the header
``X-Estampille-Signature: sha256=<hex>`` is its HMAC-SHA256 under
``webhooks.secret``. Receivers deduplicate by ``id`` (delivery is at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from relay.backoff import Backoff
from relay.config import WebhooksConfig
from relay.errors import StoreError
from relay.evidence.records import canonical_json, iso_time
from relay.store import Store
from relay.store.webhooks import WebhookEvent

log = logging.getLogger("estampille.webhooks")

SIGNATURE_HEADER = "X-Estampille-Signature"
RETRY_FIRST = 10.0  # seconds before the first retry
RETRY_MAX = 900.0  # longest wait between two retries
DEFAULT_BACKOFF = Backoff(RETRY_FIRST, RETRY_MAX)
POLL_INTERVAL = 1.0  # seconds between scans for due events
KEEP_SENT = 7 * 86400  # seconds sent and given-up events stay in the table (for inquiries)
PURGE_EVERY = 3600.0  # seconds between two purges of old events
REQUEST_TIMEOUT = 10.0  # seconds a receiver has to answer
MAX_ERROR_TEXT = 200  # characters of the last error kept in the table


def sign(secret: str, body: bytes) -> str:
    """The X-Estampille-Signature value of ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Receivers' check, in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def event_body(event_id: int, event: str, created_at: float, payload: bytes) -> bytes:
    return canonical_json(
        {"id": event_id, "event": event, "created_at": iso_time(created_at), "data": json.loads(payload)}
    )


class WebhookWorker:
    """Sends due events until stopped; one instance per service."""

    def __init__(
        self,
        store: Store,
        config: WebhooksConfig,
        *,
        clock: Callable[[], float],
        backoff: Backoff = DEFAULT_BACKOFF,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.backoff = backoff
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for due events now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        purged_at = 0.0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self.send_due(session)
                    if self.clock() - purged_at >= PURGE_EVERY:
                        purged_at = self.clock()
                        await self.store.purge_webhook_events(purged_at - KEEP_SENT)
                except StoreError:
                    log.exception("webhook queue scan failed; retrying")
                self._wake.clear()
                # Not wait_for: on 3.11 it can swallow the cancel that stops this loop (gh-86296).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()

    async def send_due(self, session: aiohttp.ClientSession) -> int:
        """Send every URL's oldest due event, repeatedly while they succeed; the number sent."""
        sent = 0
        while True:
            events = await self.store.due_webhook_events(self.clock())
            if not events:
                return sent
            results = await asyncio.gather(*(self._send_one(session, event) for event in events))
            sent += sum(results)
            if not any(results):
                return sent

    async def _send_one(self, session: aiohttp.ClientSession, event: WebhookEvent) -> bool:
        body = event_body(event.id, event.event, event.created_at, event.payload)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.config.secret, body)}
        error = None
        try:
            async with session.post(event.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    await self.store.finish_webhook_event(event.id, state="sent", next_attempt_at=self.clock(), error=None)
                    return True
                error = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT]
        now = self.clock()
        attempts = event.attempts + 1
        if now - event.created_at >= self.config.retry_for:
            log.warning("webhook event %s to %s given up after %d attempts: %s", event.id, _site(event.url), attempts,
                        error)
            await self.store.finish_webhook_event(event.id, state="failed", next_attempt_at=now, error=error)
            return True  # the next event to this URL may go now
        await self.store.finish_webhook_event(
            event.id, state="pending", next_attempt_at=now + self.backoff.delay(attempts, random.random()), error=error
        )
        log.info("webhook event %s to %s failed (%s); attempt %d", event.id, _site(event.url), error, attempts)
        return False


def _site(url: str) -> str:
    """A webhook URL as logged: scheme and host only (paths and queries may carry secrets)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
