"""Bitcoin block header sources for verification (the I/O half of ``relay.evidence.ots_verify``).

A source answers ``await source.header(height) -> bytes`` (80 raw bytes) or
raises HeaderSourceError. Sources:

- :class:`BitcoindSource`: a bitcoind JSON-RPC URL (``http://user:pass@host:8332``),
  ``getblockhash`` then ``getblockheader <hash> false``;
- :class:`EsploraSource`: an Esplora-compatible explorer API base URL
  (``.../api``), ``GET /block-height/<h>`` then ``GET /block/<hash>/header``;
- :class:`AgreeingSources`: several different sources that must give the same
  header (two explorers), else HeaderSourceError (the same one twice is refused);
- :class:`HeadersFile`: a text file, one header per line: ``HEIGHT HEX80``
  (decimal height, a space, the 160 hex digits of the raw header); blank lines
  and lines starting with ``#`` are ignored;
- :class:`NoSource`: none given; enough while no proof reaches a Bitcoin block.

HTTP sources check that the header they got hashes to the block hash they
were given for that height. Use :func:`verify_with` for the whole flow.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from relay.anchor.fetch import ReplyTooLarge, read_bounded
from relay.errors import HeaderSourceError
from relay.evidence.ots_verify import HEADER_BYTES, Verification, block_hash, required_heights, verify_ots

MAX_REPLY_BYTES = 64 * 1024  # a header is 160 hex digits; any sane reply is far below this
DEFAULT_TIMEOUT = 30.0
_HEX64 = re.compile(r"[0-9a-f]{64}")


class HeaderSource(Protocol):
    """Anything that gives the raw 80-byte header of the best-chain block at a height."""

    async def header(self, height: int) -> bytes: ...

    def describe(self) -> str: ...


def _clean_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL without credentials (never logged), and the credentials as an Authorization header."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HeaderSourceError(f"expected an http(s) URL, got {parts.scheme or 'no'} scheme")
    auth = {}
    if parts.username:
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        auth = {"Authorization": f"Basic {token}"}
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")), auth


def _header_bytes(text: str, height: int, expected_hash: str, where: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise HeaderSourceError(f"{where}: header at height {height} is not hex") from None
    if len(raw) != HEADER_BYTES:
        raise HeaderSourceError(f"{where}: header at height {height} is {len(raw)} bytes, expected {HEADER_BYTES}")
    if block_hash(raw) != expected_hash:
        raise HeaderSourceError(f"{where}: header at height {height} does not hash to block {expected_hash}")
    return raw


class BitcoindSource:
    """A bitcoind (or compatible) JSON-RPC endpoint."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url, self._auth_headers = _clean_url(url)
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def describe(self) -> str:
        return f"bitcoind {self.url}"

    async def _call(self, session: aiohttp.ClientSession, method: str, *params: object) -> object:
        payload = {"jsonrpc": "1.0", "id": "estampille", "method": method, "params": list(params)}
        async with session.post(self.url, json=payload, headers=self._auth_headers) as resp:
            body = await read_bounded(resp, MAX_REPLY_BYTES)
        try:
            reply = json.loads(body)
        except ValueError:
            raise HeaderSourceError(f"{self.describe()}: {method} answered HTTP {resp.status}, not JSON") from None
        if not isinstance(reply, dict) or reply.get("error"):
            message = reply.get("error", {}).get("message", "error") if isinstance(reply, dict) else "error"
            raise HeaderSourceError(f"{self.describe()}: {method} failed: {str(message)[:200]}")
        return reply.get("result")

    async def header(self, height: int) -> bytes:
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as session:
                hash_ = await self._call(session, "getblockhash", height)
                if not isinstance(hash_, str) or not _HEX64.fullmatch(hash_):
                    raise HeaderSourceError(f"{self.describe()}: getblockhash {height} gave no block hash")
                text = await self._call(session, "getblockheader", hash_, False)
        except (TimeoutError, aiohttp.ClientError, ReplyTooLarge) as exc:
            raise HeaderSourceError(f"{self.describe()}: {exc.__class__.__name__} {exc}") from exc
        if not isinstance(text, str):
            raise HeaderSourceError(f"{self.describe()}: getblockheader gave no hex header")
        return _header_bytes(text, height, hash_, self.describe())


class EsploraSource:
    """An Esplora-compatible explorer API (Blockstream's and mempool.space's speak it)."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        clean, _ = _clean_url(url)
        self.url = clean.rstrip("/")  # joined by hand: urljoin would drop a last path segment
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def describe(self) -> str:
        return f"explorer {self.url}"

    async def _get(self, session: aiohttp.ClientSession, path: str) -> str:
        async with session.get(f"{self.url}/{path}") as resp:
            body = await read_bounded(resp, MAX_REPLY_BYTES)
            if resp.status != 200:
                raise HeaderSourceError(f"{self.describe()}: GET /{path} answered HTTP {resp.status}")
        return body.decode("ascii", "replace").strip()

    async def header(self, height: int) -> bytes:
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as session:
                hash_ = await self._get(session, f"block-height/{height}")
                if not _HEX64.fullmatch(hash_):
                    raise HeaderSourceError(f"{self.describe()}: no block hash for height {height}")
                text = await self._get(session, f"block/{hash_}/header")
        except (TimeoutError, aiohttp.ClientError, ReplyTooLarge) as exc:
            raise HeaderSourceError(f"{self.describe()}: {exc.__class__.__name__} {exc}") from exc
        return _header_bytes(text, height, hash_, self.describe())


class AgreeingSources:
    """Several sources asked in parallel; they must all give the same header."""

    def __init__(self, sources: Iterable[HeaderSource]) -> None:
        self.sources = list(sources)
        if not self.sources:
            raise HeaderSourceError("no header source given")
        names = [s.describe().rstrip("/").lower() for s in self.sources]
        if len(set(names)) != len(names):
            # One source asked twice agrees with itself: that is one source, not two.
            raise HeaderSourceError("the same header source is given twice: give two different ones")

    def describe(self) -> str:
        return " and ".join(s.describe() for s in self.sources)

    async def header(self, height: int) -> bytes:
        headers = await asyncio.gather(*(s.header(height) for s in self.sources))
        if len(set(headers)) != 1:
            raise HeaderSourceError(f"header sources disagree at height {height}: {self.describe()}")
        return headers[0]


class HeadersFile:
    """Headers read from a file of ``HEIGHT HEX80`` lines (see the module docstring)."""

    def __init__(self, headers: Mapping[int, bytes], name: str = "headers file") -> None:
        self._headers = dict(headers)
        self._name = name

    @classmethod
    def from_path(cls, path: Path) -> HeadersFile:
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise HeaderSourceError(f"cannot read headers file {path}: {exc}") from exc
        return cls(parse_headers_file(text, str(path)), str(path))

    def describe(self) -> str:
        return self._name

    async def header(self, height: int) -> bytes:
        try:
            return self._headers[height]
        except KeyError:
            raise HeaderSourceError(f"{self._name} has no header for height {height}") from None


def parse_headers_file(text: str, name: str = "headers file") -> dict[int, bytes]:
    """Parse ``HEIGHT HEX80`` lines; HeaderSourceError naming the first bad line."""
    headers: dict[int, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        try:
            height, raw = int(fields[0]), bytes.fromhex(fields[1])
            if len(fields) != 2 or height < 0 or len(raw) != HEADER_BYTES:
                raise ValueError
        except (ValueError, IndexError):
            raise HeaderSourceError(f"{name}:{number}: expected 'HEIGHT HEX', the header being 80 bytes") from None
        headers[height] = raw
    return headers


def format_headers_file(headers: Mapping[int, bytes]) -> str:
    """The headers-file text for ``headers`` (what bundles ship for offline verification)."""
    return "".join(f"{height} {raw.hex()}\n" for height, raw in sorted(headers.items()))


async def fetch_headers(source: HeaderSource, heights: Iterable[int]) -> dict[int, bytes]:
    """The raw header at each height (HeaderSourceError if any is missing or disputed)."""
    heights = list(heights)
    headers = await asyncio.gather(*(source.header(h) for h in heights))
    return dict(zip(heights, headers, strict=True))


async def verify_with(source: HeaderSource, document: bytes, ots_bytes: bytes, *, regtest: bool = False) -> Verification:
    """Fetch the headers a proof needs from ``source`` and verify it (HeaderSourceError if fetching fails)."""
    try:
        heights = required_heights(ots_bytes)
    except ValueError as exc:
        return Verification("invalid", str(exc))
    headers = await fetch_headers(source, heights)
    return verify_ots(document, ots_bytes, headers, regtest=regtest)


class NoSource:
    """No header source given: proofs still pending verify without one; a Bitcoin attestation asks for one."""

    async def header(self, height: int) -> bytes:
        raise HeaderSourceError(
            f"a proof reaches Bitcoin block {height}: give a header source to check it"
            " (--bitcoind URL, --esplora URL twice, or --headers FILE)"
        )

    def describe(self) -> str:
        return "no header source"


def make_source(*, bitcoind: str | None = None, esplora: Iterable[str] = (), headers_file: Path | None = None) -> HeaderSource:
    """The one source the options name: a bitcoind URL, two or more explorers that must agree, a file, or none."""
    esplora = list(esplora)
    given = sum((bitcoind is not None, bool(esplora), headers_file is not None))
    if given == 0:
        return NoSource()
    if given > 1:
        raise HeaderSourceError("give one header source: --bitcoind URL, --esplora URL twice, or --headers FILE")
    if bitcoind is not None:
        return BitcoindSource(bitcoind)
    if headers_file is not None:
        return HeadersFile.from_path(headers_file)
    if len(esplora) < 2:
        raise HeaderSourceError("give --esplora twice: two independent explorers must agree")
    return AgreeingSources(EsploraSource(url) for url in esplora)
