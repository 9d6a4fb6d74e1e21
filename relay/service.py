"""The composition root: opens the store and starts the relay's components on one loop.

Components start in order and stop in reverse order. Each is recorded with
:meth:`Service._started` as it comes up, so a failure half-way stops exactly
what was started. Other subsystems (tracker, anchoring, metrics) add their
start in :meth:`Service.start` the same way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from relay.config import Config
from relay.deliver import Deliverer, Upstream
from relay.intake import start_intake
from relay.store import Store
from tracker.app import TrackerServer, start_tracker

log = logging.getLogger("estampille.service")

STOP_GRACE_SECONDS = 5.0


class Service:
    """The running relay: store, SMTP intake and delivery worker."""

    def __init__(self, config: Config, *, upstream: Upstream | None = None,
                 clock: Callable[[], float] = time.time, tracker_only: bool = False) -> None:
        self.config = config
        self.clock = clock
        self.tracker_only = tracker_only  # `serve --tracker-only`: the web side alone, no SMTP
        self.tracker: TrackerServer | None = None
        self._upstream = upstream
        self.store: Store | None = None
        self.deliverer: Deliverer | None = None
        self.smtp_server: asyncio.Server | None = None
        self.components: list[tuple[str, Callable[[], Awaitable[None]]]] = []

    def _started(self, name: str, stop: Callable[[], Awaitable[None]]) -> None:
        self.components.append((name, stop))

    async def start(self) -> None:
        try:
            self.store = await Store.open(self.config.data_path)
            self._started("store", self.store.close)
            if not self.tracker_only:
                self.deliverer = Deliverer(self.config, self.store, self._upstream, clock=self.clock)
                await self.deliverer.start()
                self._started("delivery", self.deliverer.stop)
                self.smtp_server = await start_intake(self.config, self.deliverer.spool)
                self._started("smtp", self._stop_smtp)
            if self.config.tracker.enabled or self.tracker_only:
                self.tracker = await start_tracker(self.config, self.store, clock=self.clock)
                self._started("tracker", self.tracker.close)
        except BaseException:
            await self.stop()
            raise
        log.info("data directory: %s", self.config.data_path)
        if self.smtp_server is None:
            return
        log.info("SMTP intake listening on %s", ", ".join(self.smtp_addresses))
        if self.config.upstream.kind == "maildir":
            log.info("upstream: maildir %s (nothing leaves this machine)", self.config.data_path / "outbox")
        else:
            u = self.config.upstream
            log.info("upstream: smtp %s:%d (tls: %s)", u.host, u.port, u.tls)

    async def stop(self) -> None:
        """Stop accepting mail first, then let deliveries in flight finish briefly, then close the store."""
        while self.components:
            name, stop = self.components.pop()
            try:
                await stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                log.exception("stopping %s failed", name)

    async def _stop_smtp(self) -> None:
        assert self.smtp_server is not None
        self.smtp_server.close()
        try:
            await asyncio.wait_for(self.smtp_server.wait_closed(), STOP_GRACE_SECONDS)
        except asyncio.TimeoutError:
            log.warning("SMTP sessions still open after %.0fs; closing", STOP_GRACE_SECONDS)

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


def _address(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(config: Config, *, tracker_only: bool = False) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully."""
    service = Service(config, tracker_only=tracker_only)
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await service.stop()
    log.info("stopped")


def setup_logging(config: Config) -> None:
    """One line per event on stderr. aiosmtpd's own logger stays quiet: it logs raw AUTH lines."""
    logging.basicConfig(
        level=config.log.level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def run(config: Config, *, tracker_only: bool = False) -> int:
    """Entry point of `estampille serve`."""
    setup_logging(config)
    asyncio.run(serve(config, tracker_only=tracker_only))
    return 0
