"""Acknowledgment pages: ``GET /a/<token>`` shows, ``POST /a/<token>`` acknowledges.

A GET (or HEAD) never acknowledges: mail scanners fetch every link, some with a
headless browser. It records the fetch, classified as likely scanner or likely
person. Only the page's button, a POST carrying the form's anti-forgery value,
records the receipt; the first one does, later ones say when it was done. A link
that replaced a URL in the message leads on (303) to that exact URL.

Unknown and malformed tokens get the same 404 page. A known token that a proof
bundle disclosed, or that expired (tracker.token_ttl_days after delivery), gets a
410 page that says which; the refusal is recorded and nothing is acknowledged. Both
count as misses against the client's address (429 past tracker.miss_limit_per_minute).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from relay.errors import StoreError
from relay.evidence.records import Record, commitment, iso_time, receipt_record
from relay.store import FetchWrite, PersonalData, ReceiptWrite, tokens
from relay.store.tracker import AckLink
from tracker import antiforgery
from tracker.classify import classify_fetch
from tracker.forwarded import client_address
from tracker.i18n import format_time
from tracker.pages import TRACKER, Tracker, form_action_csp, page_language, render

log = logging.getLogger("estampille.tracker")

# secrets.token_urlsafe(16) and up: 22 characters of the URL-safe base64 alphabet at least.
TOKEN = re.compile(r"[A-Za-z0-9_-]{22,128}")
MAX_USER_AGENT = 512  # longer user agents are cut before they are stored and committed to
DAY = 86400

Link = AckLink


def add_routes(app: web.Application) -> None:
    # Everything under /a/ is routed here, so even a token with a slash is a counted miss.
    app.router.add_get("/a/{token:.*}", show)  # also answers HEAD
    app.router.add_post("/a/{token:.*}", acknowledge)


@dataclass(frozen=True)
class Visitor:
    """Who is asking: the client address (after trusted proxies) and user agent."""

    address: str
    user_agent: str


def _visitor(request: web.Request) -> Visitor:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    address = peer[0] if peer else ""
    trusted = request.app[TRACKER].trusted_proxies
    if trusted:  # X-Forwarded-For is read only from configured proxies
        address = client_address(address, request.headers.getall("X-Forwarded-For", []), trusted)
    return Visitor(address, request.headers.get("User-Agent", "")[:MAX_USER_AGENT])


class TokenRefused(web.HTTPGone):
    """A known token that acknowledges nothing: disclosed by a proof bundle, or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.page = f"token_{reason}"  # the wording of the page that says so (tracker.i18n)


async def _link(request: web.Request, visitor: Visitor, now: float) -> Link:
    """The token's link row; a miss (404), a blocked address (429) or a refused token (410) raises."""
    tracker = request.app[TRACKER]
    if tracker.misses.blocked(visitor.address, now):
        raise web.HTTPTooManyRequests(headers={"Retry-After": str(int(tracker.misses.window))})
    token = request.match_info["token"]
    link = None
    if TOKEN.fullmatch(token):
        link = await tracker.links.find(hashlib.sha256(token.encode("ascii")).hexdigest())
    if link is None:
        tracker.misses.hit(visitor.address, now)
        raise web.HTTPNotFound()
    reason = refusal(link, tracker.config.tracker.token_ttl_days, now)
    if reason is not None:
        tracker.misses.hit(visitor.address, now)  # each refusal is a write: rate-limited like a miss
        await tokens.record_refusal(tracker.store, delivery_id=link.delivery_id, at=now, method=request.method,
                                    reason=reason)
        log.warning("delivery %d: %s acknowledgment token refused (%s)", link.delivery_id, reason, request.method)
        raise TokenRefused(reason)
    if link.delivery_digest is None:
        raise StoreError(f"delivery {link.delivery_id} has a token but no delivery record")
    return link


def refusal(link: Link, ttl_days: int, now: float) -> str | None:
    """Why this known token acknowledges nothing ('disclosed', 'expired'), or None.

    A disclosed token was given out in a proof bundle's copy: whoever holds the bundle holds
    it. Expiry counts from the delivery (the upstream's acceptance), not from certification."""
    if link.disclosed_by is not None:
        return "disclosed"
    if ttl_days and now >= link.delivered_at + ttl_days * DAY:
        return "expired"
    return None


def _evidence(tracker: Tracker, link: Link, visitor: Visitor, kind: str, now: float) -> tuple[PersonalData, Record]:
    """The raw data kept until the purge (with a fresh salt), and the receipt record that
    holds only their salted commitments."""
    salt = tracker.salts.take()
    record = receipt_record(
        delivery_digest=link.delivery_digest, kind=kind, at=iso_time(now),
        ip_commitment=commitment(salt, visitor.address), user_agent_commitment=commitment(salt, visitor.user_agent),
    )
    return PersonalData(salt=salt, ip=visitor.address, user_agent=visitor.user_agent), record


async def show(request: web.Request) -> web.Response:
    """The page with the message's details and the button; records the fetch."""
    tracker = request.app[TRACKER]
    now = tracker.clock()
    visitor = _visitor(request)
    link = await _link(request, visitor, now)
    verdict = classify_fetch(
        method=request.method,
        user_agent=visitor.user_agent,
        client_address=visitor.address,
        seconds_since_delivery=now - link.delivered_at,
        scanner_window=tracker.config.tracker.scanner_window,
        scanner_networks=tracker.scanner_networks,
    )
    personal, record = _evidence(tracker, link, visitor, "fetched", now)
    await tracker.recorder.record_fetch(
        FetchWrite(link.delivery_id, now, request.method, verdict.kind, verdict.reason, personal, record)
    )
    log.debug("delivery %d fetched (%s): likely %s, %s", link.delivery_id, request.method, verdict.kind,
              verdict.reason)
    response = render(request, "ack.html", _details(request, link, tracker.config.tracker.timezone) | {
        "form_key": tracker.form_key.value(request.match_info["token"]),
    })
    if link.target_url:  # the page's CSP lets the form lead on there
        response.headers["Content-Security-Policy"] = form_action_csp(link.target_url)
    return response


async def acknowledge(request: web.Request) -> web.StreamResponse:
    """Record the receipt (first time only), then confirm or lead on to the original URL."""
    tracker = request.app[TRACKER]
    now = tracker.clock()
    visitor = _visitor(request)
    link = await _link(request, visitor, now)
    form = await request.post()
    value = form.get(antiforgery.FIELD)
    if not tracker.form_key.is_valid(request.match_info["token"], value if isinstance(value, str) else None):
        raise web.HTTPForbidden()
    personal, record = _evidence(tracker, link, visitor, "acknowledged", now)
    ack = await tracker.recorder.record_receipt(ReceiptWrite(link.delivery_id, now, personal, record))
    if ack.first:
        log.info("delivery %d acknowledged (receipt %s)", link.delivery_id, record.digest)
    if link.target_url:
        # Set as is: the URL the sender wrote, '&', '#' and percent-escapes untouched.
        return web.Response(status=303, headers={"Location": link.target_url})
    lang = page_language(request)
    when = format_time(ack.at, tracker.config.tracker.timezone, lang)
    return render(request, "done.html", _details(request, link, tracker.config.tracker.timezone) | {
        "first": ack.first, "acknowledged": when,
    })


def _details(request: web.Request, link: Link, tz: str) -> dict[str, Any]:
    """What the pages show about the message, in the visitor's language."""
    lang = page_language(request)
    return {
        "sender": link.mail_from,
        "subject": link.subject,
        "sent": format_time(link.received_at, tz, lang),
        "recipient": link.recipient,
        "target": bool(link.target_url),
        "acknowledged": (
            format_time(link.acknowledged_at, tz, lang) if link.acknowledged_at is not None else None
        ),
    }
