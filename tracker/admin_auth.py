"""Admin access: API tokens checked against the configured SHA-256 hashes, and
admin page sessions.

- Tokens are random strings an operator generates with ``estampille admin-token``;
  only their SHA-256 (hex) goes into ``admin.token_hashes``.
- The API (``/api/v1``) wants ``Authorization: Bearer <token>``; anything else is
  answered 401 in JSON.
- The admin pages (``/admin``) log in with a token once, into a session: a random
  256-bit identifier kept server side (in memory: a restart logs everyone out) in
  a cookie that is HttpOnly, SameSite=Strict, and Secure when the tracker's public
  URL is https. Without a session every admin page redirects to the login form.

The middleware guards every path under those prefixes, so a route added later
cannot be left open by mistake.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web

API_PREFIX = "/api/v1"
ADMIN_PREFIX = "/admin"
LOGIN_PATH = "/admin/login"
COOKIE = "estampille_admin"
SESSION_SECONDS = 8 * 3600  # a working day; then log in again
MAX_SESSIONS = 1000  # oldest sessions are dropped beyond this
TOKEN_BYTES = 32


def token_hash(token: str) -> str:
    """What ``admin.token_hashes`` holds for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh admin token and its hash."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_hash(token)


def token_ok(token: str | None, hashes: Iterable[str]) -> bool:
    """True when ``token`` hashes to one of ``hashes`` (compared in constant time)."""
    if not token:
        return False
    digest = token_hash(token)
    return any(hmac.compare_digest(digest, h.strip().lower()) for h in hashes)


def bearer_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@dataclass
class Sessions:
    """Logged-in admin sessions: identifier -> expiry (Unix time)."""

    clock: Callable[[], float]
    expiries: dict[str, float] = field(default_factory=dict)

    def create(self) -> str:
        now = self.clock()
        self.expiries = {sid: exp for sid, exp in self.expiries.items() if exp > now}
        while len(self.expiries) >= MAX_SESSIONS:
            self.expiries.pop(next(iter(self.expiries)))
        sid = secrets.token_urlsafe(TOKEN_BYTES)
        self.expiries[sid] = now + SESSION_SECONDS
        return sid

    def valid(self, sid: str | None) -> bool:
        return sid is not None and self.expiries.get(sid, 0.0) > self.clock()

    def drop(self, sid: str | None) -> None:
        if sid is not None:
            self.expiries.pop(sid, None)


ADMIN_SESSIONS = web.AppKey("admin_sessions", Sessions)
TOKEN_HASHES = web.AppKey("admin_token_hashes", tuple)


def is_guarded(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/") or path == ADMIN_PREFIX or (
        path.startswith(ADMIN_PREFIX + "/") and path != LOGIN_PATH
    )


def unauthorized_json(message: str) -> web.Response:
    return web.json_response(
        {"error": "unauthorized", "message": message}, status=401, headers={"WWW-Authenticate": 'Bearer realm="estampille"'}
    )


@web.middleware
async def require_admin(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Nothing under /api/v1 or /admin (but the login form) answers without credentials."""
    path = request.path
    if not is_guarded(path):
        return await handler(request)
    if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
        token = bearer_token(request)
        if token is None:
            return unauthorized_json("send an admin token as 'Authorization: Bearer <token>'")
        if not token_ok(token, request.config_dict[TOKEN_HASHES]):
            return unauthorized_json("this token is not one of admin.token_hashes")
        return await handler(request)
    if not request.config_dict[ADMIN_SESSIONS].valid(request.cookies.get(COOKIE)):
        raise web.HTTPSeeOther(LOGIN_PATH)
    return await handler(request)


def set_session_cookie(response: web.StreamResponse, sid: str, *, secure: bool) -> None:
    response.set_cookie(
        COOKIE, sid, max_age=SESSION_SECONDS, path=ADMIN_PREFIX, httponly=True, samesite="Strict", secure=secure
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=ADMIN_PREFIX)
