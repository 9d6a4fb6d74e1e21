"""Certify: turn the spooled bytes into one recipient's copy, ready to leave.

One call per recipient. Line endings become CRLF; Date and Message-ID are added
when missing (the caller passes values shared by every copy of a submission);
the acknowledgment link goes in (a block at the top of the first text/plain and
text/html parts, and/or rewritten links); when no part can carry the block, a
new first part of a multipart/mixed carries it, or a new multipart/mixed wraps
the message, the block first and the original entity second, byte for byte (so
signatures inside stay valid); lines over 998 octets and 8-bit parts
the upstream cannot carry are re-encoded; both DKIM signatures are added; the
SHA-256 of the exact bytes is taken.

The MIME work is done on bytes: the structure is located by boundaries, and
only the parts that change are rebuilt, each keeping its charset and
Content-Transfer-Encoding. Every other byte, headers included, is left as it
came. Signed, encrypted and forwarded parts and attachments are never touched.
A copy goes out without a link only when the sender's policy asks for none, or
the rewrite patterns match nothing, and the result says why. A message without
a From that has a domain gets one from the envelope sender (:func:`from_repair`),
or is not signed at all: DKIM verifiers must reject it (RFC 6376 5.4).

Pure: no clock, no randomness, no I/O. The caller passes the time, the token
source and the keys, and runs this off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses

from relay.certify import dkim
from relay.certify.acklink import (
    AckLink,
    AckPolicy,
    AckTemplates,
    LinkMaker,
    TokenSource,
    insert_html,
    insert_text,
    rewrite_html,
    rewrite_text,
)
from relay.certify.message import header_block, to_crlf
from relay.config import AckConfig
from relay.errors import CertifyError, FromFieldError

MAX_LINE = 998  # octets per line, CRLF excluded (RFC 5322 2.1.1)
MAX_DEPTH = 20  # MIME nesting followed; deeper parts are left as they are
PROTECTED = ("multipart/signed", "multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime")
_HEADER_PARSER = BytesHeaderParser(policy=email_policy.compat32)
_ASCII = ("us-ascii", "ascii", "ansi_x3.4-1968")
# What 8-bit text declared (or defaulting to) us-ascii is read as, in order: the first that
# decodes. ISO-8859-1 decodes every octet, so none is ever lost (Windows-1252 leaves five unmapped).
_UNDECLARED_CHARSETS = ("utf-8", "windows-1252", "iso-8859-1")
# Fields that describe the entity rather than the message: they move inside when it is wrapped.
_CONTENT_FIELD = re.compile(rb"content-", re.IGNORECASE)
_BOUNDARY_PREFIX = b"=_estampille_"  # "=_" never occurs in quoted-printable or base64 text
_ALT_BOUNDARY_PREFIX = b"=_estampille_alt_"  # the wrapper's own boundary is no prefix of it
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")  # a field name and its colon, as DKIM signers read it


@dataclass(frozen=True)
class Certified:
    """One recipient's copy and the evidence about it."""

    data: bytes
    sha256: str
    links: tuple[AckLink, ...]
    ack_link_inserted: bool
    ack_link_reason: str | None
    dkim: tuple[dict[str, str], ...]
    message_id: str
    # "first part" (a new first part of the multipart/mixed) or "wrapped" (a new multipart/mixed
    # around the message) when the link needed a place of its own; None otherwise.
    ack_link_placement: str | None = None


@dataclass(frozen=True)
class _Part:
    start: int  # first octet of the part's header block
    body_start: int
    end: int  # one past the body's last octet
    head_end: int  # one past the header block (its last CRLF), == start when empty
    content_type: str
    charset: str | None
    cte: str | None  # lower-case, None when absent
    attachment: bool
    inline_file: bool  # a file name and an inline disposition: a body, when it is the only one
    boundary: bytes | None = None
    children: tuple[_Part, ...] = ()
    # A multipart's preamble and epilogue: (start, end) ranges that MIME readers ignore.
    ignored: tuple[tuple[int, int], ...] = ()

    @property
    def protected(self) -> bool:
        return self.content_type in PROTECTED or self.content_type.startswith("message/")


@dataclass(frozen=True, eq=False)
class Prepared:
    """What every recipient's copy of one message shares, worked out once per message."""

    data: bytes  # CRLF, Date and Message-ID present, our own earlier signatures removed
    root: _Part
    keys: dkim.DomainKeys
    policy: AckPolicy
    message_id: str


@dataclass(frozen=True, eq=False)
class Certifier:
    """What stays the same for every message: the ack settings, templates and keys."""

    ack: AckConfig
    templates: AckTemplates
    public_url: str
    keyring: dkim.Keyring

    def certify(
        self,
        data: bytes,
        *,
        mail_from: str,
        date: datetime,
        message_id_local: str,
        tokens: TokenSource,
        now: int,
        eight_bit_mime: bool = False,
    ) -> Certified:
        """The certified copy of ``data`` for one recipient: :meth:`prepare` then :meth:`copy`."""
        prepared = self.prepare(data, mail_from=mail_from, date=date, message_id_local=message_id_local)
        return self.copy(prepared, tokens=tokens, now=now, eight_bit_mime=eight_bit_mime)

    def prepare(self, data: bytes, *, mail_from: str, date: datetime, message_id_local: str) -> Prepared:
        """The per-message work: line endings, signing keys, Date and Message-ID, MIME structure.

        ``date`` and ``message_id_local`` (the left part of a Message-ID) are used only when
        the message lacks Date or Message-ID; every recipient's copy then shares them.
        A missing From, or one without a domain, becomes ``mail_from`` (:func:`from_repair`);
        raises :class:`FromFieldError` when ``mail_from`` cannot supply it.
        """
        data = _with_trailing_blank(to_crlf(data))
        added = from_repair(data, mail_from)
        if added is not None:
            end = dkim.header_end(data)
            data = _set_field(data[:end], b"From", added.encode("utf-8")) + data[end:]
        keys = self.keyring.for_addresses([*_from_addresses(data), mail_from])
        data = _complete_headers(data, date, f"<{message_id_local}@{keys.domain}>")
        data = dkim.strip_signatures(data, keys)
        return Prepared(
            data=data,
            root=_parse(data, 0, len(data), 0),
            keys=keys,
            policy=AckPolicy.for_sender(self.ack, mail_from),
            message_id=_header_value(data, b"message-id") or "",
        )

    def copy(self, prepared: Prepared, *, tokens: TokenSource, now: int, eight_bit_mime: bool = False) -> Certified:
        """One recipient's copy: its acknowledgment link(s), both DKIM signatures, its SHA-256.

        ``tokens`` makes one fresh token per call; ``now`` is the DKIM t= (Unix seconds);
        ``eight_bit_mime``: the upstream announced 8BITMIME, so 8-bit parts may stay 8-bit.
        """
        maker = LinkMaker(self.public_url, tokens)
        edits = _Edits(self, prepared.policy, maker, prepared.data, eight_bit_mime)
        try:
            reason = edits.plan(prepared.root)
            changes, failure = edits.rebuild_all(prepared.root)
            data, placement = edits.place(prepared.root, changes)
            links = tuple(maker.links)
        except Exception as exc:  # noqa: BLE001 - a flaw in editing must not hold up a convocation
            # The message goes out as it came, still signed and fingerprinted, and the
            # delivery record says why it carries no link (DESIGN.md: nothing lost).
            data, failure, links, placement = prepared.data, None, (), None
            reason = f"message left unchanged: inserting the link failed ({type(exc).__name__})"
        signed = dkim.sign(data, prepared.keys, self.keyring.signed_headers, now)
        return Certified(
            data=signed,
            sha256=hashlib.sha256(signed).hexdigest(),
            links=links,
            ack_link_inserted=bool(links),
            ack_link_reason=None if links else (reason or failure or "no link matched the rewrite patterns"),
            dkim=tuple(k.evidence() for k in prepared.keys.keys),
            message_id=prepared.message_id,
            ack_link_placement=placement,
        )


def from_repair(data: bytes, mail_from: str) -> str | None:
    """The From value to give a message that has no From with a domain (the envelope sender),
    or None when its From is usable. Raises :class:`FromFieldError` when the envelope sender
    has no domain either. Reads the header block only, so intake can call it at DATA.
    """
    head = _with_trailing_blank(to_crlf(header_block(data)))
    head = head[: dkim.header_end(head)]
    fields = [f for f in _fields(head) if f.lower().startswith(b"from:")]
    if fields and _has_domain(fields[0][5:].decode("utf-8", "surrogateescape")):
        return None
    local, _, domain = mail_from.rpartition("@")
    if local and domain.strip():
        return mail_from
    missing = "has a From: field without a domain" if fields else "has no From: field"
    raise FromFieldError(
        f"The message {missing} and the envelope sender has no domain to supply it:"
        " add a From: field with a full address (From: Mairie <mairie@example.org>)"
    )


def _has_domain(value: str) -> bool:
    """At least one address of the From value has a local part and a domain."""
    for _, address in getaddresses([" ".join(value.split())]):
        local, _, domain = address.rpartition("@")
        if local and domain and not any(c in domain for c in " <>()"):
            return True
    return False


# -- reading the structure ----------------------------------------------


def _parse(data: bytes, start: int, end: int, depth: int, digest: bool = False) -> _Part:
    """The part spanning data[start:end], with its children if it is a multipart we may enter.
    ``digest``: the parent is a multipart/digest, where a part without Content-Type is a message."""
    if data.startswith(b"\r\n", start):
        head_end, body_start = start, start + 2
    else:
        blank = data.find(b"\r\n\r\n", start, end)
        head_end, body_start = (end, end) if blank < 0 else (blank + 2, blank + 4)
    msg = _HEADER_PARSER.parsebytes(data[start:head_end])
    if digest:
        msg.set_default_type("message/rfc822")  # RFC 2046 5.1.5
    try:
        charset = msg.get_content_charset()
    except (ValueError, LookupError):
        charset = None
    cte = msg.get("content-transfer-encoding")
    part = _Part(
        start=start,
        body_start=min(body_start, end),
        end=end,
        head_end=head_end,
        content_type=msg.get_content_type(),
        charset=charset,
        cte=str(cte).strip().lower() if cte is not None else None,
        attachment=msg.get_content_disposition() == "attachment" or msg.get_filename() is not None,
        inline_file=msg.get_content_disposition() in (None, "inline") and msg.get_filename() is not None,
    )
    boundary = msg.get_boundary()
    if msg.get_content_maintype() != "multipart" or part.protected or not boundary or depth >= MAX_DEPTH:
        return part
    delimiter = boundary.encode("utf-8", "surrogateescape")
    ranges, ignored = _child_ranges(data, part.body_start, end, delimiter)
    digest = part.content_type == "multipart/digest"
    children = tuple(_parse(data, s, e, depth + 1, digest) for s, e in ranges)
    return _Part(**{**part.__dict__, "children": children, "ignored": ignored, "boundary": delimiter})


def _child_ranges(
    data: bytes, start: int, end: int, boundary: bytes
) -> tuple[list[tuple[int, int]], tuple[tuple[int, int], ...]]:
    """Byte ranges of the body parts between delimiter lines (RFC 2046 5.1.1), and of the
    preamble (up to the first delimiter line, the whole body if there is none) and epilogue
    (after the closing delimiter line)."""
    delimiter = b"--" + boundary
    ranges: list[tuple[int, int]] = []
    open_at: int | None = None
    preamble_end: int | None = None
    pos = start
    while pos < end:
        if pos == start and data.startswith(delimiter, start):
            line = start
        else:
            found = data.find(b"\r\n" + delimiter, pos, end)
            if found < 0:
                break
            line = found + 2
        after = line + len(delimiter)
        eol = data.find(b"\r\n", after, end)
        eol = end if eol < 0 else eol
        rest = data[after:eol]
        closing = rest.startswith(b"--")
        if rest.removeprefix(b"--").strip(b" \t"):
            pos = after  # a longer line that merely starts like the delimiter
            continue
        if open_at is not None:
            ranges.append((open_at, max(open_at, line - 2)))
        if preamble_end is None:
            preamble_end = line
        if closing:
            return ranges, ((start, preamble_end), (min(eol + 2, end), end))
        open_at, pos = min(eol + 2, end), eol
    if open_at is not None:  # no closing delimiter: the last part runs to the end
        ranges.append((open_at, end))
    return ranges, ((start, end if preamble_end is None else preamble_end),)


def _ignored(part: _Part) -> list[tuple[int, int]]:
    """The preambles and epilogues of the multiparts outside protected subtrees."""
    if part.protected:
        return []
    return [*part.ignored, *(span for child in part.children for span in _ignored(child))]


def _leaves(part: _Part) -> list[_Part]:
    """Leaf parts outside protected subtrees, in order."""
    if part.protected:
        return []
    if not part.children:
        return [part]
    return [leaf for child in part.children for leaf in _leaves(child)]


# -- what changes ---------------------------------------------------------


Edit = Callable[[str], str]


class _Edits:
    """Decides which parts of one copy change, and how."""

    def __init__(
        self, certifier: Certifier, policy: AckPolicy, maker: LinkMaker, data: bytes, eight_bit_mime: bool
    ) -> None:
        self.certifier = certifier
        self.eight_bit_mime = eight_bit_mime
        self.policy = policy
        self.maker = maker
        self.data = data
        self.kinds: dict[int, str] = {}  # part start -> "insert" or "rewrite"
        self.inserted = False  # the block went into an existing part
        self._block_url: str | None = None

    def plan(self, root: _Part) -> str | None:
        """Choose the text parts to edit; the reason no link can go in, if any."""
        if not (self.policy.insert or self.policy.rewrite_patterns):
            return "acknowledgment links are disabled for this sender"
        texts = [p for p in _leaves(root) if p.content_type in ("text/plain", "text/html")]
        bodies = [p for p in texts if not p.attachment]
        if not bodies and len(texts) == 1 and texts[0].inline_file:
            bodies = texts  # an inline text with a file name that is the only text: the body
        seen: set[str] = set()
        for p in bodies:
            insert = self.policy.insert and p.content_type not in seen
            seen.add(p.content_type)
            if insert or self.policy.rewrite_patterns:
                self.kinds[p.start] = "insert" if insert else "rewrite"
        if not self.kinds and not self.policy.insert:
            return "the message has no text/plain or text/html part to carry the link"
        return None

    def place(self, root: _Part, changes: list[tuple[int, int, bytes]]) -> tuple[bytes, str | None]:
        """The copy's bytes with ``changes`` made, and the block given a part of its own when
        the policy asks for it and no existing part took it: ("first part" or "wrapped")."""
        if self.inserted or not self.policy.insert:
            return _splice(self.data, changes), None
        html = any(p.content_type == "text/html" for p in _leaves(root))
        if root.content_type == "multipart/mixed" and root.children and root.boundary is not None:
            first = root.children[0].start
            part = self._ack_part(html) + b"\r\n--" + root.boundary + b"\r\n"
            return _splice(self.data, [(first, first, part), *changes]), "first part"
        page = self._ack_part(html or root.content_type == "text/html")
        return _wrap(_splice(self.data, changes), page, root.content_type.startswith("multipart/")), "wrapped"

    def _ack_part(self, html: bool) -> bytes:
        """A part holding only the block: text/plain, or text and HTML in a multipart/alternative."""
        templates = self.certifier.templates
        text = _text_part("text/plain", _crlf(templates.text_block(self.block_url())))
        if not html:
            return text
        page = _text_part("text/html", _crlf(templates.html_block(self.block_url())))
        boundary = _new_boundary(self.data, _ALT_BOUNDARY_PREFIX)
        return (b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n--' + boundary + b"\r\n"
                + text + b"\r\n--" + boundary + b"\r\n" + page + b"\r\n--" + boundary + b"--")

    def rebuild_all(self, root: _Part) -> tuple[list[tuple[int, int, bytes]], str | None]:
        """(start, end, new bytes) for every leaf that changes, and why an edit was given up."""
        changes: list[tuple[int, int, bytes]] = []
        failure: str | None = None
        eight_bit = self.eight_bit_mime
        for leaf in _leaves(root):
            body = self.data[leaf.body_start : leaf.end]
            if leaf.start in self.kinds:
                try:
                    changes.append((leaf.start, leaf.end, _rebuild(self.data, leaf, self._edit_for(leaf), eight_bit)))
                    self.inserted |= self.kinds[leaf.start] == "insert"
                    continue
                except CertifyError as exc:
                    failure = str(exc)
            if _needs_transport_fix(leaf, body, eight_bit):
                try:
                    changes.append((leaf.start, leaf.end, _rebuild(self.data, leaf, None, eight_bit)))
                except CertifyError as exc:  # undecodable (invalid base64): the part goes out as it came
                    failure = failure or str(exc)
        for start, end in _ignored(root):
            text = self.data[start:end]
            if _longest_line(text) > MAX_LINE:
                changes.append((start, end, _cut_long_lines(text)))
        return changes, failure

    def _edit_for(self, part: _Part) -> Edit:
        patterns, html = self.policy.rewrite_patterns, part.content_type == "text/html"
        insert, templates = self.kinds[part.start] == "insert", self.certifier.templates

        def edit(text: str) -> str:
            text = rewrite_html(text, patterns, self.maker) if html else rewrite_text(text, patterns, self.maker)
            if not insert:
                return text
            if html:
                return insert_html(text, _crlf(templates.html_block(self.block_url())))
            return insert_text(text, _crlf(templates.text_block(self.block_url())))

        return edit

    def block_url(self) -> str:
        """The inserted block's link: one token per copy, shared by its text and HTML parts."""
        if self._block_url is None:
            self._block_url = self.maker.new(None)
        return self._block_url


def _text_part(content_type: str, text: str) -> bytes:
    """A UTF-8 text part, quoted-printable: 7-bit whatever the upstream accepts."""
    head = b"Content-Type: " + content_type.encode("ascii") + b'; charset="utf-8"\r\n'
    head += b"Content-Transfer-Encoding: quoted-printable\r\nContent-Disposition: inline\r\n"
    return head + b"\r\n" + _encode_body(text.encode("utf-8"), "quoted-printable")


def _new_boundary(data: bytes, prefix: bytes) -> bytes:
    """A boundary that occurs nowhere in ``data``, derived from it (certify reads no randomness)."""
    seed = hashlib.sha256(data).hexdigest().encode("ascii")[:32]
    boundary, n = prefix + seed, 0
    while boundary in data:
        n += 1
        boundary = prefix + seed + b"_%d" % n
    return boundary


def _wrap(data: bytes, ack_part: bytes, multipart: bool) -> bytes:
    """A new multipart/mixed: ``ack_part`` first, then the message's entity (its Content-*
    fields and its body) byte for byte; the message's other fields stay at the top.

    A multipart entity's last CRLF (its epilogue's, or the end of an unclosed last part,
    which readers drop at the end of a message) serves as the closing delimiter's, so its
    parts read the same inside; any other body keeps its last line break as its own.
    """
    end = dkim.header_end(data)
    fields = _fields(data[:end])
    body = data[end + 2 :] if end < len(data) else b""
    entity = [f for f in fields if _CONTENT_FIELD.match(f)]
    head = [f for f in fields if not _CONTENT_FIELD.match(f)]
    boundary = _new_boundary(data, _BOUNDARY_PREFIX)
    if not any(f.lower().startswith(b"mime-version:") for f in head):
        head.append(b"MIME-Version: 1.0\r\n")
    head.append(b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n')
    if not body.isascii():
        head.append(b"Content-Transfer-Encoding: 8bit\r\n")  # a multipart is as 8-bit as what it holds
    delimiter = b"--" + boundary
    line_break = b"" if multipart and body.endswith(b"\r\n") else b"\r\n"
    return (b"".join(head) + b"\r\n" + delimiter + b"\r\n" + ack_part + b"\r\n" + delimiter + b"\r\n"
            + b"".join(entity) + b"\r\n" + body + line_break + delimiter + b"--\r\n")


def _needs_transport_fix(part: _Part, body: bytes, eight_bit_mime: bool) -> bool:
    """Lines too long for SMTP, or 8-bit octets the upstream did not say it accepts."""
    if part.content_type.startswith("multipart/"):
        return False  # a multipart we could not enter (no usable boundary) cannot take an encoding
    if part.cte == "base64" and body.isascii():
        return False  # base64 lines are short by construction (checked below otherwise)
    return _longest_line(body) > MAX_LINE or (not eight_bit_mime and not body.isascii())


def _longest_line(data: bytes) -> int:
    return max(map(len, data.split(b"\r\n"))) if data else 0


def _cut_long_lines(text: bytes) -> bytes:
    """A preamble or epilogue with its lines over MAX_LINE cut, so no MTA cuts them after
    signing. MIME readers ignore this text; each piece starts with a space, so that none
    can read as a delimiter line."""
    step = MAX_LINE - 1
    return b"\r\n".join(
        b"\r\n".join(b" " + line[i : i + step] for i in range(0, len(line), step)) if len(line) > MAX_LINE else line
        for line in text.split(b"\r\n")
    )


# -- rebuilding a part ----------------------------------------------------


def _rebuild(data: bytes, part: _Part, edit: Edit | None, eight_bit_mime: bool) -> bytes:
    """The part's new bytes: decoded, edited, re-encoded with its charset and transfer encoding."""
    head = data[part.start : part.head_end]
    body = data[part.body_start : part.end]
    decoded = _decode_body(body, part.cte)
    charset = part.charset or "us-ascii"
    if edit is not None:
        decoded, charset = _edit_text(decoded, charset, part.content_type == "text/html", edit)
    cte = _choose_cte(part.cte, decoded, eight_bit_mime)
    encoded = _encode_body(decoded, cte)
    if cte != (part.cte or "7bit"):
        head = _set_field(head, b"Content-Transfer-Encoding", cte.encode("ascii"))
    if charset != (part.charset or "us-ascii"):
        head = _set_charset(head, part.content_type, charset)
    if part.start == 0 and head != data[part.start : part.head_end] and _field(head, b"mime-version") is None:
        head = _set_field(head, b"MIME-Version", b"1.0")  # the new fields mean nothing without it
    return head + b"\r\n" + encoded


def _edit_text(decoded: bytes, charset: str, html: bool, edit: Edit) -> tuple[bytes, str]:
    """Apply ``edit`` to the text, and encode it back in its charset (widened from ASCII if needed).

    Text declared (or defaulting to) us-ascii that holds 8-bit octets lies about its charset
    (swaks and many scripts send UTF-8 undeclared): it is read as the first of
    _UNDECLARED_CHARSETS that decodes it, and goes out declared as such.
    """
    if charset.lower() in _ASCII and not decoded.isascii():
        charset = next(c for c in _UNDECLARED_CHARSETS if _decodes(decoded, c))
    try:
        codecs.lookup(charset)  # an empty body decodes with any name; encoding it back would not
        text = decoded.decode(charset)
    except LookupError as exc:
        raise CertifyError(f"the text part's charset {charset!r} is unknown") from exc
    except UnicodeDecodeError as exc:
        raise CertifyError(f"the text part is not valid {charset}") from exc
    new = edit(text)
    try:
        return new.encode(charset), charset
    except UnicodeEncodeError:
        pass
    if charset.lower() in _ASCII:  # UTF-8 reads every ASCII text the same: widening changes nothing else
        return new.encode("utf-8"), "utf-8"
    if html:  # characters the charset lacks become character references
        return new.encode(charset, "xmlcharrefreplace"), charset
    # Another charset without the block's accents: only the block loses them.
    return _ascii_fallback(text, new).encode(charset), charset


def _decodes(data: bytes, charset: str) -> bool:
    try:
        data.decode(charset)
    except UnicodeDecodeError:
        return False
    return True


def _ascii_fallback(original: str, edited: str) -> str:
    """``edited`` with every character the original lacked reduced to ASCII (accents dropped)."""
    known = set(original)
    return "".join(
        c if c in known or c.isascii() else unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode()
        for c in edited
    )


def _decode_body(body: bytes, cte: str | None) -> bytes:
    if cte == "base64":
        try:
            return base64.b64decode(body)
        except binascii.Error as exc:
            raise CertifyError("the part's base64 is invalid") from exc
    if cte == "quoted-printable":
        return binascii.a2b_qp(body)
    return body


def _choose_cte(original: str | None, decoded: bytes, eight_bit_mime: bool) -> str:
    """Keep the part's encoding unless SMTP cannot carry the result (long lines, 8-bit octets)."""
    if original in ("base64", "quoted-printable"):
        return original
    if _longest_line(decoded) > MAX_LINE or (not decoded.isascii() and not eight_bit_mime):
        return "quoted-printable"
    if not decoded.isascii():
        return "8bit"
    return original or "7bit"


def _encode_body(decoded: bytes, cte: str) -> bytes:
    if cte == "base64":
        return base64.encodebytes(decoded).replace(b"\n", b"\r\n")
    if cte == "quoted-printable":
        return to_crlf(binascii.b2a_qp(decoded, istext=True))
    return decoded


# -- header fields, on bytes ----------------------------------------------


def _fields(head: bytes) -> list[bytes]:
    """The header block's fields, each with its continuation lines and final CRLF."""
    if not head:
        return []
    return [f + b"\r\n" for f in re.split(rb"\r\n(?![ \t])", head.removesuffix(b"\r\n"))]


def _field(head: bytes, name: bytes) -> bytes | None:
    """The first field named ``name`` (lower-case), whole, or None."""
    prefix = name + b":"
    return next((f for f in _fields(head) if f.lower().startswith(prefix)), None)


def _set_field(head: bytes, name: bytes, value: bytes) -> bytes:
    """Replace the field (or add it at the end); other fields keep their bytes."""
    new = name + b": " + value + b"\r\n"
    prefix = name.lower() + b":"
    out, done = [], False
    for f in _fields(head):
        if f.lower().startswith(prefix):
            if not done:
                out.append(new)
                done = True
            continue
        out.append(f)
    return b"".join(out) + (b"" if done else new)


def _set_charset(head: bytes, content_type: str, charset: str) -> bytes:
    value = charset.encode("ascii")
    field = _field(head, b"content-type")
    if field is None:
        return _set_field(head, b"Content-Type", content_type.encode("ascii") + b"; charset=" + value)
    param = re.compile(rb'(;\s*charset\s*=\s*)("[^"]*"|[^\s;]+)', re.IGNORECASE)
    if param.search(field):
        updated = param.sub(lambda m: m.group(1) + b'"' + value + b'"', field, count=1)
    else:
        updated = field.removesuffix(b"\r\n") + b'; charset="' + value + b'"\r\n'
    return head.replace(field, updated, 1)


def _header_value(data: bytes, name: bytes) -> str | None:
    field = _field(data[: dkim.header_end(data)], name)
    if field is None:
        return None
    value = field[len(name) + 1 :].decode("utf-8", "replace")
    return " ".join(value.split())


def _from_addresses(data: bytes) -> list[str]:
    value = _header_value(data, b"from")
    return [addr for _, addr in getaddresses([value])] if value else []


def _complete_headers(data: bytes, date: datetime, message_id: str) -> bytes:
    """Add Date and Message-ID when missing: a later MTA adding them would break the signature."""
    end = dkim.header_end(data)
    head = data[:end]
    if _field(head, b"date") is None:
        head += b"Date: " + format_datetime(date).encode("ascii") + b"\r\n"
    if _field(head, b"message-id") is None:
        head += b"Message-ID: " + message_id.encode("ascii") + b"\r\n"
    return head + data[end:]


# -- whole-message helpers ------------------------------------------------


def _with_trailing_blank(data: bytes) -> bytes:
    """End with CRLF (SMTP adds one otherwise); make sure the header block is closed and well formed.

    A line in the header block that is neither a field nor a continuation ends it: every
    parser takes it for the body's first line, and DKIM signers refuse it, so the empty
    line is put before it. Fields with lines over 998 octets are folded at their whitespace.
    """
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    end = dkim.header_end(data)
    lines = data[:end].split(b"\r\n")[:-1]
    count = 0
    for line in lines:
        if not (_FIELD_START.match(line) or (count and line[:1] in (b" ", b"\t"))):
            break
        count += 1
    head = b"".join(_fold(line) + b"\r\n" for line in lines[:count])
    if count < len(lines) or end == len(data):
        return head + b"\r\n" + data[sum(len(line) + 2 for line in lines[:count]) :]
    return head + data[end:]


def _fold(line: bytes) -> bytes:
    """A header line over 998 octets folded before whitespace (relaxed DKIM reads it unchanged);
    a run without whitespace that long cannot be folded and is left as it came."""
    pieces = []
    while len(line) > MAX_LINE:
        cut = max(line.rfind(b" ", 1, MAX_LINE + 1), line.rfind(b"\t", 1, MAX_LINE + 1))
        if cut <= 0:
            break
        pieces.append(line[:cut])
        line = line[cut:]
    return b"\r\n".join([*pieces, line])


def _splice(data: bytes, changes: list[tuple[int, int, bytes]]) -> bytes:
    if not changes:
        return data
    out, pos = [], 0
    for start, end, new in sorted(changes):
        out += [data[pos:start], new]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")
