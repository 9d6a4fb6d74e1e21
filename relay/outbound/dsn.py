"""Delivery status notifications (RFC 3464): a multipart/report telling the sender
that a recipient failed for good.

Pure: the caller passes the times, the boundary and the Message-ID; this module
only assembles bytes. Lines end in CRLF, everything is 7-bit except the
returned headers, which are copied as they came (text/rfc822-headers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

DSN_SUBJECT = "Undelivered Mail Returned to Sender"
_UNSAFE = re.compile(r"[\r\n]+")


@dataclass(frozen=True)
class Failure:
    """One recipient that could not be delivered, and why."""

    recipient: str
    status: str  # enhanced status code, e.g. "5.1.1"
    diagnostic: str  # the upstream's reply, e.g. "550 5.1.1 No such user"
    original_recipient: str | None = None  # from ORCPT=, when given


def status_of(code: int | None, text: str, *, expired: bool) -> str:
    """The enhanced status code for a failure: from the reply text when it has one."""
    found = re.match(r"\s*([245]\.\d{1,3}\.\d{1,3})\b", text or "")
    if found and not expired:
        return found.group(1)
    if expired:
        return "4.4.7"  # delivery time expired
    return f"{code // 100}.0.0" if code else "5.0.0"


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    failures: list[Failure],
    original_headers: bytes,
    original_message_id: str | None,
    arrival: datetime,
    now: datetime,
    boundary: str,
    message_id: str,
) -> bytes:
    """The DSN to ``sender`` (the original MAIL FROM) for ``failures`` of one submission."""
    human = _human_part(reporting_mta, failures)
    status = _status_part(reporting_mta, failures, arrival)
    headers = original_headers.rstrip(b"\r\n").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{_clean(reporting_mta)}>",
        f"To: <{_clean(sender)}>",
        f"Subject: {DSN_SUBJECT}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    if original_message_id:
        lines.append(f"In-Reply-To: {_clean(original_message_id)}")
        lines.append(f"References: {_clean(original_message_id)}")
    head = "\r\n".join(lines) + "\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n"
    parts = [
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{human}",
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n{status}",
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n",
    ]
    return (head + "\r\n".join(parts[:2]) + "\r\n" + parts[2]).encode("ascii") + headers + (
        f"\r\n--{boundary}--\r\n".encode("ascii")
    )


def _human_part(reporting_mta: str, failures: list[Failure]) -> str:
    lines = [
        f"This is the mail system at host {_clean(reporting_mta)}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "",
    ]
    for failure in failures:
        lines.append(f"<{_clean(failure.recipient)}>: {_clean(failure.diagnostic)}")
    return "\r\n".join(_ascii(line) for line in lines) + "\r\n"


def _status_part(reporting_mta: str, failures: list[Failure], arrival: datetime) -> str:
    blocks = [f"Reporting-MTA: dns; {_clean(reporting_mta)}\r\nArrival-Date: {format_datetime(arrival)}\r\n"]
    for failure in failures:
        lines = []
        if failure.original_recipient:
            lines.append(f"Original-Recipient: {_clean(failure.original_recipient)}")
        lines += [
            f"Final-Recipient: rfc822; {_clean(failure.recipient)}",
            "Action: failed",
            f"Status: {failure.status}",
            f"Diagnostic-Code: smtp; {_clean(failure.diagnostic)}",
        ]
        blocks.append("\r\n".join(_ascii(line) for line in lines) + "\r\n")
    return "\r\n".join(blocks)


def _clean(text: str) -> str:
    """One line, so nothing a peer answered can inject a header or a part."""
    return _UNSAFE.sub(" ", text).strip()


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")
