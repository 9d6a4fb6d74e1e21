"""What every tracker page shares: the application state, rendering on the base
template in the visitor's language, security headers, and the error pages.

Handlers (``ack``, and the admin pages) render with :func:`render`; errors
raised as ``web.HTTPException`` or :class:`EstampilleError` become pages in
:func:`errors`, the one place where failures are turned into responses.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web
from multidict import CIMultiDict

from relay.config import Config
from relay.errors import EstampilleError
from relay.ratelimit import RateLimiter
from relay.store import Store
from tracker.antiforgery import FormKey
from tracker.classify import Network
from tracker.i18n import TEXTS, negotiate
from tracker.lookup import LinkLookup
from tracker.recorder import Recorder
from tracker.salts import Salts

log = logging.getLogger("estampille.tracker")

STATIC_MAX_AGE = 3600
HTML = "text/html; charset=utf-8"

# Nothing external, no scripts, no framing; forms post only to us (see form_action_csp).
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = CIMultiDict({
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token in the URL never leaks to the next site
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Server": "Estampille",  # not aiohttp's default, which names the Python and aiohttp versions
})
# A page's own headers, copied into each page (rather than set one by one); a page whose form
# leads on to another site widens its CSP (form_action_csp).
PAGE_HEADERS = CIMultiDict({"Content-Type": HTML, "Vary": "Accept-Language", "Content-Security-Policy": CSP})
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

# Wording (i18n keys '<page>_title', '<page>_text') of the error page for each status users can meet.
ERROR_PAGES = {403: "forbidden", 404: "not_found", 405: "method", 429: "too_many", 500: "error", 503: "error"}


# The wording as objects: Jinja's ``t.key`` then succeeds on its first getattr, where a dict
# costs a failed getattr per lookup (a third of the acknowledgment page's rendering time).
_WORDING = {lang: SimpleNamespace(**texts) for lang, texts in TEXTS.items()}


@dataclass(frozen=True)
class Tracker:
    """What the handlers share: configuration, store, clock and the tracker's state."""

    config: Config
    store: Store
    clock: Callable[[], float]
    form_key: FormKey  # of the tracker's secret, for the acknowledgment form
    salts: Salts  # for the commitments of fetch and receipt records
    recorder: Recorder
    links: LinkLookup
    misses: RateLimiter
    trusted_proxies: tuple[Network, ...]
    scanner_networks: tuple[Network, ...]
    base_path: str  # path part of tracker.public_url, without the trailing slash


TRACKER = web.AppKey("tracker", Tracker)


def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """A page in the visitor's language, on the shared base template.

    Rendered with the environment aiohttp_jinja2.setup made, but not through its
    render_template, which parses the content type it has just set, twice, on every page.
    """
    lang = page_language(request)
    config = request.config_dict  # the admin pages and the API are sub-applications
    env = config[aiohttp_jinja2.APP_KEY]
    page = env.get_template(template).render({**_base(config[TRACKER], lang), **context})
    return _response(page, status)


def page_language(request: web.Request) -> str:
    """tracker.language, or with 'browser' the language the visitor's browser prefers."""
    configured = request.config_dict[TRACKER].config.tracker.language
    return negotiate(request.headers.get("Accept-Language")) if configured == "browser" else configured


def _base(tracker: Tracker, lang: str) -> dict[str, Any]:
    """What every page's context holds: the same for all pages in one language."""
    return {"lang": lang, "t": _WORDING[lang], "css_href": f"{tracker.base_path}/static/style.css"}


def _response(page: str, status: int) -> web.Response:
    return web.Response(body=page.encode(), status=status, headers=PAGE_HEADERS)


def form_action_csp(target_url: str | None) -> str:
    """The CSP for a page whose form may lead on (303) to ``target_url``: browsers apply
    form-action to the redirect, so the target's origin is allowed too."""
    if not target_url:
        return CSP
    parts = urlsplit(target_url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    source = origin if _ORIGIN.match(origin) else f"{parts.scheme}:" if parts.scheme in ("http", "https") else ""
    return f"{CSP} {source}".rstrip() if source else CSP.replace("; form-action 'self'", "")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.update(SECURITY_HEADERS)  # replaces any value a handler set
    if request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", f"public, max-age={STATIC_MAX_AGE}")
    else:
        response.headers.setdefault("Cache-Control", "no-store")  # pages name the recipient


@web.middleware
async def errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Every failure ends here as a page; the visitor never sees exception text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        page = getattr(exc, "page", None) or ERROR_PAGES.get(exc.status, "error")  # a page of its own (ack.TokenRefused)
        response = render(request, "error.html", {"page": page}, status=exc.status)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except EstampilleError as exc:
        log.error("tracker request failed: %s", exc)
        return render(request, "error.html", {"page": "error"}, status=503)
    except Exception:
        log.exception("tracker request failed")
        return render(request, "error.html", {"page": "error"}, status=500)
