"""Prometheus metrics on an admin-only address (``admin.metrics_listen_host``
and ``admin.metrics_listen_port``; port 0 disables the endpoint).

Two kinds of figures:

- read from the store when Prometheus scrapes (queue depth, oldest deferred
  delivery, anchoring backlog, acknowledgments, page fetches): the truth on
  disk, right after a restart too. The ``/metrics`` handler refreshes them on
  the event loop, then renders; prometheus-client's collectors are synchronous
  and only read the figures it was given.
- counted at the edges, in this process (SMTP error replies, HTTP error
  responses, calendars' attestations refused, copies made without an acknowledgment
  link): events that leave no row of their own (a copy's reason is inside its delivery
  record's JSON).

Exposed (prefix ``estampille_``):

    deliveries{state}                     gauge    queue depth by state
    deliveries_held                       gauge    poison messages held (counted in deliveries{state="deferred"})
    delivery_attempts_total{outcome}      counter  attempts by outcome (delivered, deferred, failed)
    oldest_deferred_age_seconds           gauge    age of the oldest message with a deferred delivery
    anchor_leaves_pending                 gauge    records not yet in a submitted batch
    anchor_oldest_leaf_age_seconds        gauge
    anchor_batches_pending                gauge    batches not yet confirmed in Bitcoin ('attested' included)
    anchor_rejected_attestations_total{calendar} counter  Bitcoin attestations that failed their header check
    anchor_oldest_batch_age_seconds       gauge
    acknowledgments_total                 counter  receipts confirmed by a member
    ack_page_fetches_total{classification} counter fetches of acknowledgment pages (scanner, person)
    smtp_error_replies_total{code}        counter  4xx and 5xx replies the intake sent
    copies_without_link_total{reason}     counter  certified copies that carry no acknowledgment link
    http_error_responses_total{status}    counter  HTTP responses of 400 and above (tracker)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from relay.config import Config
from relay.errors import EstampilleError, StoreError
from relay.store import OperationsFigures, Store, held
from relay.store.states import DeliveryState

log = logging.getLogger("estampille.metrics")

DELIVERY_STATES = tuple(DeliveryState)
ATTEMPT_OUTCOMES = ("delivered", "deferred", "failed")
FETCH_CLASSES = ("scanner", "person")
PREFIX = "estampille_"


class StoreFigures:
    """A prometheus-client collector over the last figures read from the store."""

    def __init__(self) -> None:
        self.figures: OperationsFigures | None = None
        self.now = 0.0

    def update(self, figures: OperationsFigures, now: float) -> None:
        self.figures, self.now = figures, now

    def _age(self, since: float | None) -> float:
        return 0.0 if since is None else max(0.0, self.now - since)

    def collect(self) -> Iterator[Metric]:
        f = self.figures
        if f is None:
            return
        yield _labelled(GaugeMetricFamily, "deliveries", "Deliveries by state (queue depth).", "state",
                        DELIVERY_STATES, f.deliveries_by_state)
        yield _labelled(CounterMetricFamily, "delivery_attempts", "Delivery attempts by outcome.", "outcome",
                        ATTEMPT_OUTCOMES, f.attempts_by_outcome)
        yield GaugeMetricFamily(PREFIX + "oldest_deferred_age_seconds",
                                "Age of the oldest message with a deferred delivery (0: none).",
                                value=self._age(f.oldest_deferred_received_at))
        yield GaugeMetricFamily(PREFIX + "anchor_leaves_pending", "Evidence records waiting for a batch.",
                                value=f.leaves_pending)
        yield GaugeMetricFamily(PREFIX + "anchor_oldest_leaf_age_seconds",
                                "Age of the oldest record waiting for a batch (0: none).",
                                value=self._age(f.oldest_leaf_queued_at))
        yield GaugeMetricFamily(PREFIX + "anchor_batches_pending",
                                "Batches submitted or being submitted, not yet confirmed in Bitcoin.",
                                value=f.batches_pending)
        yield GaugeMetricFamily(PREFIX + "anchor_oldest_batch_age_seconds",
                                "Age of the oldest unconfirmed batch (0: none).",
                                value=self._age(f.oldest_batch_created_at))
        yield CounterMetricFamily(PREFIX + "acknowledgments", "Deliveries whose recipient acknowledged receipt.",
                                  value=f.receipts)
        yield _labelled(CounterMetricFamily, "ack_page_fetches", "Acknowledgment page fetches by classification.",
                        "classification", FETCH_CLASSES, f.fetches_by_classification)


def _labelled(kind: type, name: str, documentation: str, label: str, values: tuple[str, ...],
              counts: dict[str, int]) -> Metric:
    family = kind(PREFIX + name, documentation, labels=[label])
    for value in sorted(set(values) | set(counts)):
        family.add_metric([value], counts.get(value, 0))
    return family


class Metrics:
    """The relay's registry: store figures plus the counters the edges increment."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.store_figures = StoreFigures()
        self.registry.register(self.store_figures)
        self.smtp_errors = Counter(PREFIX + "smtp_error_replies", "SMTP replies with a 4xx or 5xx code.",
                                   ["code"], registry=self.registry)
        self.http_errors = Counter(PREFIX + "http_error_responses", "HTTP responses with a status of 400 or more.",
                                   ["status"], registry=self.registry)
        self.held = Gauge(PREFIX + "deliveries_held", "Deliveries held after crashing the relay ('estampille queue"
                          " release').", registry=self.registry)
        self.rejected_attestations = Counter(
            PREFIX + "anchor_rejected_attestations", "Bitcoin attestations from a calendar that failed their check"
            " against the block header, by calendar.", ["calendar"], registry=self.registry)
        self.unlinked = Counter(PREFIX + "copies_without_link", "Certified copies without an acknowledgment link.",
                                ["reason"], registry=self.registry)

    def rejected_attestation(self, calendar: str) -> None:
        """Count one attestation the upgrade worker refused (relay.anchor.worker's ``on_rejected``)."""
        self.rejected_attestations.labels(calendar or "unknown").inc()

    def copy_unlinked(self, reason: str) -> None:
        """Count one copy stored without an acknowledgment link (the deliverer calls it)."""
        self.unlinked.labels(reason).inc()

    def smtp_reply(self, status: str) -> None:
        """Count one reply the intake sends, if it is an error (called for every reply)."""
        code = status[:3]
        if code[:1] in ("4", "5") and code.isdigit():
            self.smtp_errors.labels(code).inc()

    async def count_http_response(self, request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp ``on_response_prepare`` hook: counts error responses, error pages included."""
        if response.status >= 400:
            self.http_errors.labels(str(response.status)).inc()

    async def render(self, store: Store, now: float) -> bytes:
        """Refresh the store figures, then the exposition text."""
        self.store_figures.update(await store.operations_figures(), now)
        self.held.set(await held.held_count(store))
        return generate_latest(self.registry)


async def start_metrics_server(
    config: Config, metrics: Metrics, store: Store, clock: Callable[[], float]
) -> web.AppRunner:
    """Serve GET /metrics on the admin address; the caller cleans the runner up."""

    async def handle(request: web.Request) -> web.Response:
        try:
            body = await metrics.render(store, clock())
        except StoreError as exc:
            log.error("metrics: cannot read the store: %s", exc)
            raise web.HTTPServiceUnavailable(text="store unavailable\n") from None
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.admin.metrics_listen_host, config.admin.metrics_listen_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise EstampilleError(
            f"metrics cannot listen on {config.admin.metrics_listen_host}:{config.admin.metrics_listen_port}:"
            f" {exc.strerror}"
        ) from exc
    return runner
