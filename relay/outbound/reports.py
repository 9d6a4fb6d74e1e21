"""Delivery status reports that come back to the bounce domain: read, never trusted blindly.

The outbound MTA sends a report (RFC 3464 ``multipart/report; report-type=delivery-status``)
when it delivers a copy, defers it or gives up, because each copy asked for them (RFC 3461,
relay.outbound.verp). Postfix, Exim, Sendmail, Exchange and Gmail all write that format; a
few older or misconfigured MTAs send a plain-text bounce instead (Exim's, qmail's, Exchange
2003's and Gmail's classic texts), read here as a fallback that can only say "failed" or "delayed":
no text is taken as proof that a copy arrived.

A report is hostile input (anyone may send mail to the bounce domain): the fields are checked
against RFC 3464's grammar, an action must agree with its status class, a report cut short
(its delivery-status part not closed) is refused, and sizes are bounded. Which delivery a
report belongs to is decided by the caller (relay.outbound.bounces), from its return path.

Pure: bytes in, a :class:`Report` out, or :class:`ReportError`.
"""

from __future__ import annotations

import email
import email.errors
import email.message
import email.policy
import re
from dataclasses import dataclass

from relay.errors import EstampilleError

MAX_REPORT_OCTETS = 256 * 1024  # RET=HDRS: a report carries the copy's headers, not its body
MAX_RECIPIENT_BLOCKS = 100
MAX_FIELD_CHARS = 1000  # a diagnostic longer than this is cut (it goes into a record)
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
# The status class each action may carry (RFC 3464 2.3.3, 3463): a delivery is 2.X.X, a
# failure 5.X.X, or 4.X.X when the MTA gave up on a temporary error; a delay 4.X.X.
_CLASSES = {"failed": "45", "delayed": "4", "delivered": "2", "relayed": "2", "expanded": "2"}
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_REPLY_CODE = re.compile(r"^\s*([245]\d\d)(?=[\s-]|$)")
_DS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_ADDRESS = re.compile(r"<?([^\s<>@\";:]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})>?")
# The phrases classic plain-text bounces open with (Exim, qmail, Postfix without DSN,
# Sendmail, Exchange 2003, Lotus): a text without one is not taken for a bounce.
_TEXT_BOUNCE_MARKERS = (
    "could not be delivered to one or more of its recipients",  # Exim
    "following address(es) failed",  # Exim
    "wasn't able to deliver your message",  # qmail
    "your message could not be delivered",  # Postfix without DSN
    "permanent fatal errors",  # Sendmail
    "could not be reached",  # Exchange 2003
    "did not reach the following recipient",  # Exchange 2003
    "delivery to the following recipient failed",  # Gmail before 2015
    "delivery to the following recipient has been delayed",  # Gmail before 2015
    "delivery has failed to these recipients",  # Exchange 2007 and later
    "message has not yet been delivered",  # Exim's delay warning
    "delivery to the following recipients failed",  # Exchange 2003
)
_TEXT_ENHANCED = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_TEXT_REPLY = re.compile(r"(?<!\d)([45]\d\d)[ -](?:[45]\.\d{1,3}\.\d{1,3}\s)?\S")


class ReportError(EstampilleError):
    """The message is not a delivery status report this relay can read: not one, malformed,
    or truncated. It is refused, never attached to a delivery."""


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's part of a report (RFC 3464 2.3): what the reporting MTA says happened."""

    action: str  # one of ACTIONS
    status: str  # RFC 3463 enhanced code, e.g. "5.1.1"
    final_recipient: str | None  # the address (the address type, e.g. "rfc822;", removed)
    original_recipient: str | None  # the ORCPT the copy was sent with, when the MTA kept it
    remote_mta: str | None  # the member's server that answered, e.g. "mx.example.org"
    diagnostic: str | None  # its reply, e.g. "550 5.1.1 <a@example.org>: user unknown"
    last_attempt: str | None  # the date the MTA gives, as written

    @property
    def reply_code(self) -> int | None:
        """The SMTP reply code at the start of the diagnostic (250, 550...), if any."""
        found = _REPLY_CODE.match(self.diagnostic or "")
        return int(found.group(1)) if found else None

    def names(self, address: str) -> bool:
        """Whether this block is about ``address`` (its original or its final recipient)."""
        wanted = address.lower()
        return any(a is not None and a.lower() == wanted for a in (self.original_recipient, self.final_recipient))


@dataclass(frozen=True)
class Report:
    """A parsed delivery status report."""

    format: str  # "rfc3464", or "text" for a plain-text bounce (failed or delayed only)
    reporting_mta: str | None
    envelope_id: str | None  # Original-Envelope-Id: the ENVID the copy was sent with
    arrival_date: str | None
    recipients: tuple[RecipientStatus, ...]
    mentioned: tuple[str, ...] = ()  # a text bounce's addresses (it has no recipient fields)

    def status_for(self, address: str) -> RecipientStatus | None:
        """The block about ``address``; for a text bounce, its one status if it names ``address``."""
        if self.format == "text":
            return self.recipients[0] if address.lower() in self.mentioned else None
        return next((r for r in self.recipients if r.names(address)), None)


def parse_report(data: bytes) -> Report:
    """The report in ``data``: RFC 3464 if it has a delivery-status part, else a plain-text bounce."""
    if len(data) > MAX_REPORT_OCTETS:
        raise ReportError(f"larger than {MAX_REPORT_OCTETS} octets")
    try:
        return _parse(data)
    except ReportError:
        raise
    except Exception as exc:
        raise ReportError(f"unreadable message ({type(exc).__name__})") from exc


def _parse(data: bytes) -> Report:
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    parts = list(message.walk())
    status_parts = [p for p in parts if p.get_content_type() in _DS_TYPES]
    if len(status_parts) > 1:
        raise ReportError("more than one delivery-status part")
    if status_parts:
        _check_not_truncated(message, parts, status_parts[0])
        return _rfc3464(status_parts[0])
    return _text_bounce(message)


def _check_not_truncated(message: email.message.Message, parts: list[email.message.Message],
                         status_part: email.message.Message) -> None:
    """A delivery-status part must be complete: some part after it, or the closing boundary.

    A report cut after its status part (the returned headers lost) still says all it says.
    """
    unclosed = any(isinstance(d, email.errors.CloseBoundaryNotFoundDefect) for p in parts for d in p.defects)
    parent = next((p for p in parts if p.get_content_maintype() == "multipart"
                   and any(child is status_part for child in _children(p))), None)
    last = parent is None or _children(parent)[-1] is status_part
    if unclosed and last or any(isinstance(d, email.errors.StartBoundaryNotFoundDefect) for d in message.defects):
        raise ReportError("truncated: the delivery-status part is not closed")


def _rfc3464(part: email.message.Message) -> Report:
    blocks = _field_blocks(part)
    if len(blocks) < 2:
        raise ReportError("a delivery-status part needs per-message fields and at least one recipient")
    if len(blocks) > MAX_RECIPIENT_BLOCKS + 1:
        raise ReportError(f"more than {MAX_RECIPIENT_BLOCKS} recipients")
    head = blocks[0]
    if "reporting-mta" not in head:
        raise ReportError("no Reporting-MTA field")
    recipients = tuple(_recipient(block) for block in blocks[1:])
    return Report(
        format="rfc3464",
        reporting_mta=_typed_value(head.get("reporting-mta")),
        envelope_id=_clean(head.get("original-envelope-id")),
        arrival_date=_clean(head.get("arrival-date")),
        recipients=recipients,
    )


def _recipient(block: dict[str, str]) -> RecipientStatus:
    action = (block.get("action") or "").strip().lower()
    if action not in ACTIONS:
        raise ReportError(f"recipient block with action {action[:40]!r}")
    status = _STATUS.fullmatch((block.get("status") or "").split("(")[0].strip())
    if status is None:
        raise ReportError(f"recipient block with status {(block.get('status') or '')[:40]!r}")
    if status.group(1) not in _CLASSES[action]:
        raise ReportError(f"action {action} with status {status.group(0)}: contradictory")
    final = _address(block.get("final-recipient"))
    if final is None:
        raise ReportError("recipient block without Final-Recipient")
    return RecipientStatus(
        action=action,
        status=status.group(0),
        final_recipient=final,
        original_recipient=_address(block.get("original-recipient")),
        remote_mta=_typed_value(block.get("remote-mta")),
        diagnostic=_typed_value(block.get("diagnostic-code")),
        last_attempt=_clean(block.get("last-attempt-date")),
    )


def _field_blocks(part: email.message.Message) -> list[dict[str, str]]:
    """The part's groups of fields (per-message, then one per recipient), names lowercased.

    The email package parses a delivery-status body into messages, one per group; a part
    sent base64 or quoted-printable (some gateways do) comes as text, read the same way.
    """
    payload = part.get_payload()
    if isinstance(payload, list):
        groups = [list(block.items()) for block in payload if isinstance(block, email.message.Message)]
    else:
        text = _decoded(part).replace("\r\n", "\n")
        groups = [list(email.message_from_string(chunk + "\n").items())
                  for chunk in re.split(r"\n\s*\n", text) if chunk.strip()]
    return [{name.strip().lower(): value for name, value in group} for group in groups if group]


def _clean(value: str | None) -> str | None:
    """A field value unfolded, on one line, bounded; None when empty."""
    if value is None:
        return None
    text = " ".join(str(value).split())[:MAX_FIELD_CHARS]
    return text or None


def _typed_value(value: str | None) -> str | None:
    """'dns; mx.example.org' -> 'mx.example.org', 'smtp; 550 ...' -> '550 ...'."""
    text = _clean(value)
    if text is None:
        return None
    kind, sep, rest = text.partition(";")
    return (rest.strip() or None) if sep and re.fullmatch(r"[A-Za-z0-9-]+", kind.strip()) else text


def _address(value: str | None) -> str | None:
    text = _typed_value(value)
    if text is None:
        return None
    text = text.strip().strip("<>").strip()
    return text if "@" in text and not re.search(r"[\s<>]", text) else None


def _text_bounce(message: email.message.Message) -> Report:
    """A plain-text bounce: failed (a 5xx) or delayed (4xx only), and the addresses it names."""
    text = _first_text(message)
    lower = " ".join(text.lower().split())
    if not any(marker in lower for marker in _TEXT_BOUNCE_MARKERS):
        raise ReportError("neither a delivery-status report nor a known bounce text")
    enhanced = _TEXT_ENHANCED.search(text)
    reply = _TEXT_REPLY.search(text)
    if enhanced is None and reply is None:
        raise ReportError("a bounce text without a status or a reply code")
    klass = enhanced.group(1) if enhanced else reply.group(1)[0]  # type: ignore[union-attr]
    status = enhanced.group(0) if enhanced else f"{klass}.0.0"
    diagnostic = None
    if reply is not None:  # the reply, to the end of its line
        diagnostic = _clean(text[reply.start():].split("\n", 1)[0])
    failed_header = str(message.get("X-Failed-Recipients", ""))  # Exim's
    mentioned = tuple(dict.fromkeys(a.lower() for a in _ADDRESS.findall(text + " " + failed_header)))
    return Report(
        format="text",
        reporting_mta=None,
        envelope_id=None,
        arrival_date=None,
        recipients=(RecipientStatus(action="failed" if klass == "5" else "delayed", status=status,
                                    final_recipient=None, original_recipient=None, remote_mta=None,
                                    diagnostic=diagnostic, last_attempt=None),),
        mentioned=mentioned,
    )


def _first_text(message: email.message.Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return _decoded(part)
    return "" if message.is_multipart() else _decoded(message)


def _children(part: email.message.Message) -> list[email.message.Message]:
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, email.message.Message)] if isinstance(payload, list) else []


def _decoded(part: email.message.Message) -> str:
    """A part's body as text, its transfer encoding undone; an unknown charset read as UTF-8."""
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return ""
    try:
        return raw.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")
