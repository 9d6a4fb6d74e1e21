"""The tracker's aiohttp application: acknowledgment pages, admin pages and the API.

``make_app(config, store)`` builds the application: the acknowledgment routes are
its own (``ack.add_routes(app)``), the admin pages and the API are sub-applications
with their own guard (``admin.setup(app)``); all render through :mod:`tracker.pages`
(shared base template, wording, error pages, security headers). ``start_tracker`` runs it on the configured address; the
composition root (relay/service.py) calls it.

No access log: request paths carry acknowledgment tokens, which are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web

from relay.config import Config
from relay.errors import EstampilleError
from relay.ratelimit import RateLimiter
from relay.store import Store
from tracker import ack, admin, antiforgery, verify
from tracker.classify import parse_networks
from tracker.lookup import LinkLookup
from tracker.pages import TRACKER, Tracker, errors, security_headers
from tracker.recorder import Recorder
from tracker.salts import Salts

log = logging.getLogger("estampille.tracker")

STATIC_DIR = Path(__file__).parent / "static"
MAX_REQUEST_BODY = 64 * 1024  # the forms posted here are a few hundred octets
ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def make_app(config: Config, store: Store, *, clock: Callable[[], float] = time.time,
             on_response: ResponseHook | None = None) -> web.Application:
    """The tracker application over an open store; the recorder runs while the app runs.

    ``on_response`` sees every response before it is sent (the metrics count errors with it).
    """
    app = web.Application(middlewares=[errors], client_max_size=MAX_REQUEST_BODY)
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("tracker", "templates"),
        autoescape=True,  # every value is escaped; subjects and addresses are attacker-controlled
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # templates ship with the package; no stat() per page
    )
    tc = config.tracker
    app[TRACKER] = Tracker(
        config=config,
        store=store,
        clock=clock,
        form_key=antiforgery.FormKey(antiforgery.load_secret(config.data_path)),
        salts=Salts(),
        recorder=Recorder(store),
        links=LinkLookup(store),
        misses=RateLimiter(tc.miss_limit_per_minute),
        trusted_proxies=parse_networks(tc.trusted_proxies),
        scanner_networks=parse_networks(tc.scanner_networks),
        base_path=urlsplit(tc.public_url).path.rstrip("/"),
    )
    app.on_response_prepare.append(security_headers)
    if on_response is not None:
        app.on_response_prepare.append(on_response)
    app.cleanup_ctx.append(_recorder_running)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", STATIC_DIR, name="static")
    ack.add_routes(app)
    verify.add_routes(app)  # the proof-bundle verification page, run in the browser
    admin.setup(app)  # the admin pages and the API, sub-applications behind their guard
    return app


async def _recorder_running(app: web.Application):
    recorder = app[TRACKER].recorder
    recorder.start()
    yield
    await recorder.stop()


async def healthz(request: web.Request) -> web.Response:
    """Liveness and database reachability, for load balancers and monitoring."""
    await request.app[TRACKER].store.fetchone("SELECT 1")
    return web.Response(text="ok\n")


@dataclass(frozen=True)
class TrackerServer:
    """A running tracker: its runner and the address it is bound to."""

    runner: web.AppRunner

    @property
    def port(self) -> int:
        """The bound port (useful with listen_port = 0)."""
        return self.runner.addresses[0][1]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_tracker(
    config: Config, store: Store, *, clock: Callable[[], float] = time.time, on_response: ResponseHook | None = None
) -> TrackerServer:
    """Start the tracker on tracker.listen_host:listen_port (0: any free port)."""
    runner = web.AppRunner(
        make_app(config, store, clock=clock, on_response=on_response), access_log=None, handle_signals=False
    )
    await runner.setup()
    site = web.TCPSite(runner, config.tracker.listen_host, config.tracker.listen_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise EstampilleError(
            f"tracker cannot listen on {config.tracker.listen_host}:{config.tracker.listen_port}: {exc.strerror}"
        ) from exc
    server = TrackerServer(runner)
    log.info("tracker listening on %s:%d (public URL %s)", config.tracker.listen_host, server.port,
             config.tracker.public_url)
    return server
