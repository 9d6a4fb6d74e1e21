"""The composition root: opens the store and starts the relay's components on one loop.

Components start in order and stop in reverse order: each pushes its stop on the
service's :class:`contextlib.AsyncExitStack` (:meth:`Service._started`) as it comes up,
so a failure half-way stops exactly what was started, and one stop that fails is logged
without keeping the others from running. Other subsystems (tracker, anchoring, metrics)
add their start in :meth:`Service.start` the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from relay import logs
from relay.anchor.worker import Anchorer
from relay.certify import dkim
from relay.config import Config
from relay.errors import ConfigError, DKIMKeyError
from relay.ops.datalock import DataDirLock
from relay.ops.metrics import Metrics, start_metrics_server
from relay.ops.notify import Notifier
from relay.ops.retention import purge_periodically
from relay.ops.webhooks import WebhookWorker
from relay.outbound.bounces import ReportIntake
from relay.outbound.deliver import Deliverer
from relay.outbound.reminders import Reminders
from relay.outbound.upstream import Upstream
from relay.smtp.intake import IntakeHandler, start_intake
from relay.store import Store
from tracker.app import TrackerServer, start_tracker

log = logging.getLogger("estampille.service")

STOP_GRACE_SECONDS = 5.0
# SIGTERM: SMTP transactions in progress get this long to end (a large DATA on a slow
# link), then deliveries in flight get the Deliverer's grace; both well inside the
# unit's TimeoutStopSec=90.
SMTP_DRAIN_SECONDS = 30.0
SLOW_STOP_SECONDS = 10.0  # a component still stopping after this is named in the log
# Collect the young generation after this many more container objects than were freed (Python's
# default: 700): each page fetch and delivery allocates hundreds that die young, and fetches wait
# in memory for their commit (see settle_heap and docs/performance.md).
GC_YOUNG_THRESHOLD = 10_000


class Service:
    """The running relay: store, SMTP intake and delivery worker."""

    def __init__(self, config: Config, *, upstream: Upstream | None = None,
                 clock: Callable[[], float] = time.time, tracker_only: bool = False,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier(None)
        self.clock = clock
        self.tracker_only = tracker_only  # `serve --tracker-only`: the web side alone, no SMTP
        self.tracker: TrackerServer | None = None
        self._upstream = upstream
        self.store: Store | None = None
        self.deliverer: Deliverer | None = None
        self.smtp_server: asyncio.Server | None = None
        self.intake: IntakeHandler | None = None
        self.metrics = Metrics()
        self.metrics_port: int | None = None
        self.anchorer: Anchorer | None = None  # relay.anchor.worker workers, when anchor.enabled
        self.reminders: Reminders | None = None  # relay.outbound.reminders, when reminders.enabled
        self._stops = contextlib.AsyncExitStack()

    def _started(self, name: str, stop: Callable[[], Awaitable[None]]) -> None:
        self._stops.push_async_callback(_stop_one, name, stop)

    async def start(self) -> None:
        try:
            if not self.tracker_only:  # one relay per data directory (the tracker may run beside it)
                self._started("data directory lock", DataDirLock.acquire(self.config.data_path).release)
            async with self.notifier.extending_start("opening the database: migrating its schema can take minutes"):
                self.store = await Store.open(self.config.data_path)
            self._started("store", self.store.close)
            self.store.webhook_urls = tuple(self.config.webhooks.urls)  # events are queued for these
            if not self.tracker_only:
                self.deliverer = Deliverer(self.config, self.store, self._upstream, clock=self.clock,
                                           on_unlinked=self.metrics.copy_unlinked)
                await self.deliverer.start()
                self._started("delivery", self.deliverer.stop)
            if self.config.tracker.enabled or self.tracker_only:
                self.tracker = await start_tracker(
                    self.config, self.store, clock=self.clock, on_response=self.metrics.count_http_response
                )
                self._started("tracker", self.tracker.close)
            if not self.tracker_only:
                await self._start_operations()
                # Mail is taken last, once everything it needs runs; so it is the first to stop.
                reports = ReportIntake(self.config, self.deliverer.spool) if self.config.dsn.bounce_domain else None
                self.intake = IntakeHandler.from_config(
                    self.config, self.deliverer.spool, clock=self.clock, on_reply=self.metrics.smtp_reply,
                    reports=reports,
                )
                self.deliverer.receiving = self.intake.receiving
                self.smtp_server = await start_intake(self.config, self.deliverer.spool, handler=self.intake)
                self._started("smtp", self._stop_smtp)
        except BaseException:
            await self.stop()
            raise
        log.info("data directory: %s", self.config.data_path)
        if self.smtp_server is None:
            return
        log.info("SMTP intake listening on %s", ", ".join(self.smtp_addresses))
        if self.config.upstream.kind == "maildir":
            log.info("upstream: maildir %s (no mail leaves this machine)", self.config.data_path / "outbox")
        else:
            u = self.config.upstream
            log.info("upstream: smtp %s:%d (tls: %s)", u.host, u.port, u.tls)

    async def stop(self) -> None:
        """Stop accepting mail first, then let deliveries in flight finish briefly, then close the store.

        A component slower to stop than SLOW_STOP_SECONDS is named in the log, again at each
        such interval: an operator sees what holds the stop up (and systemd's TimeoutStopSec,
        90 s, ends it in any case; what was not delivered resumes at the next start).
        """
        await self._stops.aclose()

    async def _stop_smtp(self) -> None:
        assert self.smtp_server is not None and self.intake is not None
        self.smtp_server.close()
        await self.intake.drain(SMTP_DRAIN_SECONDS)

    async def _start_operations(self) -> None:
        """The metrics endpoint (when admin.metrics_listen_port is set), the periodic purge, webhooks, anchoring."""
        assert self.store is not None
        if self.config.admin.metrics_listen_port:
            runner = await start_metrics_server(self.config, self.metrics, self.store, self.clock)
            self._started("metrics", runner.cleanup)
            self.metrics_port = runner.addresses[0][1]
            log.info("metrics on http://%s/metrics", _address(runner.addresses[0]))
        purge = asyncio.create_task(purge_periodically(self.store, self.config, self.clock), name="estampille-purge")
        self._started("retention", lambda: _cancel(purge))
        if self.config.webhooks.urls:
            webhooks = asyncio.create_task(
                WebhookWorker(self.store, self.config.webhooks, clock=self.clock).run(), name="estampille-webhooks"
            )
            self._started("webhooks", lambda: _cancel(webhooks))
        if self.config.reminders.enabled:
            assert self.deliverer is not None
            self.reminders = Reminders(self.config, self.store, self.deliverer.spool, self.clock)
            reminding = asyncio.create_task(self.reminders.run(), name="estampille-reminders")
            self._started("reminders", lambda: _cancel(reminding))
        if self.config.anchor.enabled:
            await self._start_anchoring()

    async def _start_anchoring(self) -> None:
        """The batching and upgrade workers of relay.anchor.worker (anchor.enabled)."""
        assert self.store is not None
        anchorer = self.anchorer = Anchorer(self.store, self.config.anchor, clock=self.clock,
                                            on_rejected=self.metrics.rejected_attestation, tsa=self.config.tsa)
        await anchorer.__aenter__()
        workers = asyncio.create_task(anchorer.run(), name="estampille-anchor")

        async def stop() -> None:
            await _cancel(workers)
            await anchorer.__aexit__(None, None, None)

        self._started("anchoring", stop)
        log.info("anchoring to %d calendar(s), %d must accept each batch",
                 len(self.config.anchor.calendars), self.config.anchor.min_calendars)
        if not (self.config.anchor.esplora or self.config.anchor.bitcoind):
            log.warning("no header source (anchor.bitcoind, anchor.esplora): calendars' Bitcoin attestations cannot"
                        " be checked, and batches stay 'attested', never 'confirmed' (docs/anchoring.md)")

    def reload(self) -> None:
        """SIGHUP: reread the TLS certificate and key, the SMTP credentials file and the DKIM keys.

        Connections stay open; new sessions and copies certified from now on get the
        new files. All or nothing: if a file is unusable, the error is logged and
        everything in use stays in use.
        """
        if self.intake is None or self.deliverer is None:
            return
        try:
            keyring = dkim.load_keyring(self.config)
            self.intake.reload()
        except (ConfigError, DKIMKeyError) as exc:
            log.error("reload refused, keeping the current files: %s", exc)
            return
        self.deliverer.use_keyring(keyring)
        log.info("reloaded the TLS certificate, the SMTP credentials and the DKIM keys")

    @property
    def smtp_addresses(self) -> list[str]:
        if self.smtp_server is None:
            return []
        return [_address(sock.getsockname()) for sock in self.smtp_server.sockets]

    @property
    def smtp_port(self) -> int:
        """The bound SMTP port (useful with listen_port = 0)."""
        assert self.smtp_server is not None
        return self.smtp_server.sockets[0].getsockname()[1]


async def _stop_one(name: str, stop: Callable[[], Awaitable[None]]) -> None:
    stopping = asyncio.ensure_future(stop())
    started = time.monotonic()
    try:
        while not (await asyncio.wait([stopping], timeout=SLOW_STOP_SECONDS))[0]:
            log.warning("still stopping %s after %.0f s", name, time.monotonic() - started)
        stopping.result()
    except asyncio.CancelledError:
        stopping.cancel()
        raise
    except Exception:
        log.exception("stopping %s failed", name)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _address(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


SIGNALS_STOP = (signal.SIGINT, signal.SIGTERM)


async def serve(config: Config, *, tracker_only: bool = False, notifier: Notifier | None = None) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully; SIGHUP reloads certificates and credentials."""
    notifier = notifier or Notifier(None)
    service = Service(config, tracker_only=tracker_only, notifier=notifier)
    await service.start()
    settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in SIGNALS_STOP:
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, service, notifier)
    notifier.ready(_status(service))
    try:
        await stop.wait()
        log.info("stopping: no new mail; finishing transactions and deliveries in flight")
        notifier.stopping()
    finally:
        for signum in (*SIGNALS_STOP, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await service.stop()
    log.info("stopped")


def settle_heap() -> None:
    """Leave the objects made at startup (modules, templates, configuration) out of every later
    garbage collection, and collect young objects less often (docs/performance.md). Memory held
    by young garbage cycles is bounded by GC_YOUNG_THRESHOLD objects.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _reload(service: Service, notifier: Notifier) -> None:
    notifier.reloading()
    service.reload()
    notifier.reloaded(_status(service))


def _status(service: Service) -> str:
    return f"SMTP on {', '.join(service.smtp_addresses)}" if service.smtp_server else "tracker only"


def run(config: Config, *, tracker_only: bool = False) -> int:
    """Entry point of `estampille serve`."""
    logs.setup(config.log, os.environ)
    # uvloop, not asyncio's default loop: the relay is mostly socket and event handling, where
    # libuv's loop takes less CPU (docs/performance.md).
    uvloop.run(serve(config, tracker_only=tracker_only, notifier=Notifier.from_environ(os.environ)))
    return 0
