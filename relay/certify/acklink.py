"""The acknowledgment link: a per-recipient token and the URL that carries it,
the block inserted at the top of a message, and the rewriting of configured
links into acknowledgment links that lead on to the original URL.

Pure: tokens are made by the caller (``secrets.token_urlsafe(TOKEN_BYTES)``)
and handed in through a token source; only the tracker sees a token in clear,
the database keeps its SHA-256. Loading template files is the one piece of I/O,
in :meth:`AckTemplates.from_config`.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from relay.config import AckConfig
from relay.errors import CertifyError, ConfigError

TOKEN_BYTES = 22  # secrets.token_urlsafe(22): 176 bits, well over the 128 required
TOKEN_MIN_CHARS = 22  # 22 URL-safe base64 characters carry 132 bits
URL_PLACEHOLDER = "{url}"
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")

TokenSource = Callable[[], str]

BUILTIN_TEXT = {
    "fr": (
        "Accusé de réception demandé : merci de confirmer que vous avez bien reçu ce message\n"
        "en ouvrant ce lien personnel :\n{url}\n"
        "----------------------------------------------------------------------\n\n"
    ),
    "en": (
        "Acknowledgment requested: please confirm that you received this message\n"
        "by opening this personal link:\n{url}\n"
        "----------------------------------------------------------------------\n\n"
    ),
}
BUILTIN_HTML = {
    "fr": (
        '<div style="border:1px solid #888;padding:8px;margin:0 0 12px 0;font-family:sans-serif">'
        "Accusé de réception demandé : merci de confirmer que vous avez bien reçu ce message. "
        '<a href="{url}">Confirmer la réception</a></div>\n'
    ),
    "en": (
        '<div style="border:1px solid #888;padding:8px;margin:0 0 12px 0;font-family:sans-serif">'
        "Acknowledgment requested: please confirm that you received this message. "
        '<a href="{url}">Confirm receipt</a></div>\n'
    ),
}

# A URL in plain text; what follows is trimmed of trailing punctuation.
_TEXT_URL = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_TRAILING = ".,;:!?"
# An <a> tag's href attribute: quoted with " or ', or unquoted.
_HREF = re.compile(
    r"""(<a\b[^>]*?\shref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""",
    re.IGNORECASE | re.DOTALL,
)
_BODY_TAG = re.compile(r"<body\b[^>]*>", re.IGNORECASE)


@dataclass(frozen=True)
class AckLink:
    """One acknowledgment link: its token, and the URL it leads on to (None for the inserted block)."""

    token: str
    target_url: str | None

    def __post_init__(self) -> None:
        if len(self.token) < TOKEN_MIN_CHARS or not _TOKEN_CHARS.fullmatch(self.token):
            raise CertifyError("an acknowledgment token must be at least 22 URL-safe characters (128 bits)")

    @property
    def token_sha256(self) -> str:
        """How the database and the tracker know the token."""
        return hashlib.sha256(self.token.encode("ascii")).hexdigest()

    def url(self, public_url: str) -> str:
        return ack_url(public_url, self.token)


def ack_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/a/{token}"


@dataclass(frozen=True)
class AckPolicy:
    """What to do for one sender: insert a block, rewrite links with these prefixes, or both."""

    insert: bool
    rewrite_patterns: tuple[str, ...] = ()

    @classmethod
    def for_sender(cls, config: AckConfig, sender: str) -> AckPolicy:
        """The first [[ack.senders]] rule matching ``sender`` (address, '@domain' or '*'), else the defaults."""
        address = sender.lower()
        domain = "@" + address.rpartition("@")[2]
        for rule in config.senders:
            match = rule.match.lower()
            if match == "*" or match == address or (match.startswith("@") and match == domain):
                return cls(rule.insert, tuple(rule.rewrite_patterns))
        return cls(config.insert, tuple(config.rewrite_patterns))


@dataclass(frozen=True)
class AckTemplates:
    """The inserted block, as plain text and as HTML; {url} marks where the link goes."""

    text: str = BUILTIN_TEXT["fr"]
    html: str = BUILTIN_HTML["fr"]

    @classmethod
    def from_config(cls, config: AckConfig) -> AckTemplates:
        return cls(
            text=_template(config.text_template, BUILTIN_TEXT[config.language], "ack.text_template"),
            html=_template(config.html_template, BUILTIN_HTML[config.language], "ack.html_template"),
        )

    def text_block(self, url: str) -> str:
        return self.text.replace(URL_PLACEHOLDER, url)

    def html_block(self, url: str) -> str:
        return self.html.replace(URL_PLACEHOLDER, html.escape(url, quote=True))


def _template(path: str, builtin: str, key: str) -> str:
    if not path:
        return builtin
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key} = {path!r}: cannot read it as UTF-8 text") from exc
    if URL_PLACEHOLDER not in text:
        raise ConfigError(f"{key} = {path!r}: the template has no {URL_PLACEHOLDER} placeholder")
    return text


@dataclass
class LinkMaker:
    """Hands out acknowledgment links for one copy and remembers them, in order."""

    public_url: str
    tokens: TokenSource
    links: list[AckLink] = field(default_factory=list)

    def new(self, target_url: str | None) -> str:
        link = AckLink(self.tokens(), target_url)
        self.links.append(link)
        return link.url(self.public_url)


def matches(url: str, patterns: tuple[str, ...]) -> bool:
    return any(_under(url, p) for p in patterns)


def _under(url: str, pattern: str) -> bool:
    """Whether ``url`` starts with ``pattern`` on the same host: a pattern that ends with its host
    (no path) must not take in https://portal.example.org.evil.example as https://portal.example.org."""
    if not url.startswith(pattern):
        return False
    return bool(urlsplit(pattern).path) or url[len(pattern):len(pattern) + 1] in ("", "/", "?", "#")


def rewrite_text(text: str, patterns: tuple[str, ...], maker: LinkMaker) -> str:
    """Replace each URL starting with one of ``patterns`` by an acknowledgment link."""

    def replace(m: re.Match[str]) -> str:
        url, tail = _trim_url(m.group(0))
        return (maker.new(url) if matches(url, patterns) else url) + tail

    return _TEXT_URL.sub(replace, text) if patterns else text


def _trim_url(candidate: str) -> tuple[str, str]:
    """Split trailing punctuation (and an unbalanced closing parenthesis) off a URL found in text."""
    url = candidate
    while url:
        if url[-1] in _TRAILING:
            url = url[:-1]
        elif url[-1] == ")" and url.count(")") > url.count("("):
            url = url[:-1]
        else:
            break
    return url, candidate[len(url) :]


def rewrite_html(document: str, patterns: tuple[str, ...], maker: LinkMaker) -> str:
    """Replace each href whose unescaped URL starts with one of ``patterns``; the new href is escaped."""

    def replace(m: re.Match[str]) -> str:
        raw = next(g for g in m.groups()[1:] if g is not None)
        url = html.unescape(raw).strip()
        if not matches(url, patterns):
            return m.group(0)
        return f'{m.group(1)}"{html.escape(maker.new(url), quote=True)}"'

    return _HREF.sub(replace, document) if patterns else document


def insert_text(text: str, block: str) -> str:
    return block + text


def insert_html(document: str, block: str) -> str:
    """The block right after <body ...>, or at the very top when there is no body tag."""
    m = _BODY_TAG.search(document)
    if m is None:
        return block + document
    return document[: m.end()] + block + document[m.end() :]
