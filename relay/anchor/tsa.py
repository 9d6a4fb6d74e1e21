"""Asking RFC 3161 time-stamping authorities for a token over a batch root.

The I/O edge of qualified timestamps: one POST per TSA (application/timestamp-query),
the answer read under a size limit and checked (relay.evidence.tsa_verify) before the
caller stores it. The authorities are tried in order; the first valid token wins. A
failure of every one is a TSAError; the caller records it and retries later, the
batch's Bitcoin anchoring never waits for it.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509

from relay.anchor.fetch import ReplyTooLarge, read_bounded
from relay.config import TSAAuthority, TSAConfig
from relay.errors import AnchorError, ConfigError
from relay.evidence.tsa_verify import (
    MAX_TOKEN_BYTES,
    Token,
    TokenError,
    TokenRequest,
    check_time,
    check_token,
    load_certificates,
)
from relay.store.tsa import Stamp

log = logging.getLogger("estampille.tsa")
HEADERS = {"Content-Type": "application/timestamp-query", "User-Agent": "Estampille"}


class TSAError(AnchorError):
    """No configured time-stamping authority gave a valid token: names each one's failure."""


@dataclass(frozen=True)
class _Authority:
    config: TSAAuthority
    cas: tuple[x509.Certificate, ...]
    ssl: ssl.SSLContext | None
    auth: aiohttp.BasicAuth | None


def _load(config: TSAAuthority) -> _Authority:
    """Read the CA files and client credentials of one TSA (at start: a bad file stops the relay)."""
    cas: list[x509.Certificate] = []
    for path in config.ca_files:
        try:
            cas.extend(load_certificates(Path(path).read_bytes()))
        except (OSError, TokenError) as exc:
            raise ConfigError(f"tsa.authorities ({config.name}).ca_files: cannot read {path}: {exc}") from exc
    context = None
    if config.client_cert:
        context = ssl.create_default_context()
        try:
            context.load_cert_chain(config.client_cert, config.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tsa.authorities ({config.name}).client_cert: {exc}") from exc
    auth = aiohttp.BasicAuth(config.username, config.password) if config.username else None
    return _Authority(config, tuple(cas), context, auth)


class TSAClient:
    """The configured TSAs, asked over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, config: TSAConfig) -> None:
        self._session = session
        self._config = config
        self._authorities = tuple(_load(a) for a in config.authorities)
        self.requests = 0  # POSTs made, for the bench

    async def stamp(self, preimage: bytes, now: float) -> Stamp:
        """A checked token over ``sha256(preimage)`` from the first TSA that gives one; TSAError otherwise."""
        failures = []
        for authority in self._authorities:
            name = authority.config.name
            try:
                token = await self._ask(authority, preimage, now)
            except (TokenError, AnchorError) as exc:
                log.warning("TSA %s: %s", name, exc)
                failures.append(f"{name}: {exc}")
                continue
            except Exception as exc:  # a hostile answer may break the library: a retry, never a lost token
                log.exception("TSA %s: unexpected failure", name)
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            c = authority.config
            return Stamp(c.name, c.qualified, c.trust_list, token.tsr, token.chain_pem, token.unix_time, token.policy)
        raise TSAError("; ".join(failures) or "no TSA configured")

    async def _ask(self, authority: _Authority, preimage: bytes, now: float) -> Token:
        request = TokenRequest.for_root(preimage)
        self.requests += 1
        try:
            async with self._session.post(
                authority.config.url, data=request.der, headers=HEADERS, auth=authority.auth,
                ssl=authority.ssl if authority.ssl is not None else True,
                timeout=aiohttp.ClientTimeout(total=self._config.timeout),
            ) as reply:
                if reply.status != 200:
                    raise AnchorError(f"HTTP {reply.status}")
                body = await read_bounded(reply, MAX_TOKEN_BYTES)
        except ReplyTooLarge as exc:
            raise AnchorError(f"answer larger than {MAX_TOKEN_BYTES} bytes") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AnchorError(f"unreachable: {type(exc).__name__} {exc}") from exc
        token = check_token(body, root=request.root, cas=authority.cas, nonce=request.nonce,
                            policy=authority.config.policy)
        check_time(token, now, self._config.max_skew)
        return token
