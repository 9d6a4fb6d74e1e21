"""Facts about the bytes of a received message: Message-ID, Subject, Date and the
SHA-256 of each attachment's decoded content.

Pure: takes bytes, returns values, does no I/O. Malformed messages never raise:
a fact that cannot be read is ``None`` (or left out, for attachments), because
intake must accept whatever the sending software produces.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser

HEADER_CLASSES_KEPT = 64  # we read a dozen header names; a bound all the same


class _HeaderClasses(HeaderRegistry):
    """The email package's registry defines a new class at every header it parses; the same
    class for a name is made once here (a few percent of intake's CPU, same results)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = super().__getitem__(name)
            if len(self._made) < HEADER_CLASSES_KEPT:
                self._made[key] = made
        return made


# Headers are parsed with the default policy (decoded words become text).
_POLICY = policy.default.clone(header_factory=_HeaderClasses())
_PARSER = BytesParser(policy=_POLICY)
_HEADER_PARSER = BytesHeaderParser(policy=_POLICY)
_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class Attachment:
    """One attachment: its file name, declared type and the SHA-256 of its decoded content."""

    filename: str | None
    content_type: str
    sha256: str

    def as_dict(self) -> dict[str, str | None]:
        return {"filename": self.filename, "content_type": self.content_type, "sha256": self.sha256}


@dataclass(frozen=True)
class MessageFacts:
    """What the evidence and the logs need to know about one message."""

    message_id: str | None
    subject: str | None
    date: str | None
    attachments: tuple[Attachment, ...] = field(default=())

    def attachment_dicts(self) -> list[dict[str, str | None]]:
        return [a.as_dict() for a in self.attachments]


def read_facts(data: bytes) -> MessageFacts:
    """Parse ``data`` (a whole RFC 5322 message) and return its facts."""
    msg = _PARSER.parsebytes(data)
    return MessageFacts(
        message_id=_header(msg, "Message-ID"),
        subject=_header(msg, "Subject"),
        date=_header(msg, "Date"),
        attachments=tuple(_attachments(msg)),
    )


def read_header_facts(data: bytes) -> MessageFacts:
    """Message-ID, Subject and Date only, reading the header block alone (cheap)."""
    msg = _HEADER_PARSER.parsebytes(data)
    return MessageFacts(
        message_id=_header(msg, "Message-ID"), subject=_header(msg, "Subject"), date=_header(msg, "Date")
    )


def header_block(data: bytes) -> bytes:
    """The header section of ``data``, up to (not including) the blank line."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = data.find(sep)
        if end >= 0:
            return data[: end + len(sep) // 2]
    return data


def to_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF: what SMTP clients put on the wire anyway."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return data  # already CRLF throughout, as mail from SMTP is: 3 counts beat a regex 10x
    return _BARE_LINE_END.sub(b"\r\n", data)


def _header(msg: EmailMessage, name: str) -> str | None:
    try:
        value = msg.get(name)
    except (ValueError, IndexError, TypeError, LookupError):
        # A header the email package cannot decode: fall back to its raw text.
        value = next((v for k, v in msg.raw_items() if k.lower() == name.lower()), None)
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _attachments(msg: EmailMessage) -> list[Attachment]:
    found: list[Attachment] = []
    for part in msg.walk():
        if part.is_multipart() or not _is_attachment(part):
            continue
        try:
            payload = part.get_payload(decode=True)
        except (ValueError, TypeError, LookupError):
            payload = None
        if not isinstance(payload, bytes):
            payload = b""
        found.append(
            Attachment(
                filename=_filename(part),
                content_type=part.get_content_type(),
                sha256=hashlib.sha256(payload).hexdigest(),
            )
        )
    return found


def _is_attachment(part: EmailMessage) -> bool:
    try:
        disposition = part.get_content_disposition()
    except (ValueError, TypeError, LookupError):
        disposition = None
    if disposition == "attachment":
        return True
    # Inline parts that carry a file name (images, PDFs) are attachments too.
    return disposition == "inline" and _filename(part) is not None and part.get_content_maintype() != "text"


def _filename(part: EmailMessage) -> str | None:
    try:
        return part.get_filename()
    except (ValueError, TypeError, LookupError):
        return None
