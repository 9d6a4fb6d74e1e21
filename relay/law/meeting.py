"""The meeting date and the deadline of one convocation, from the message and the configuration.

The meeting date comes, in this order, from:

1. the ``X-Meeting-Date`` header a sending tool can set (ISO 8601: ``2026-12-15`` or
   ``2026-12-15T18:30``, with or without an offset);
2. the sender's ``[[law.senders]] meeting_date_pattern``, in the Subject, then the text;
3. the French date expressions of the Subject and the text (``relay.law.dates``).

A header or a rule that does not yield a valid date does not stop the search: the next source
is read. The admin can set or correct the date afterwards (an evidence record of its own).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser
from html.parser import HTMLParser

from relay.config import LawConfig, LawSender
from relay.law.dates import MeetingDate, find_meeting_date, read_date, read_time
from relay.law.deadline import PARIS, Assembly, Deadline, paris_date

MEETING_DATE_HEADER = "X-Meeting-Date"
URGENCY_HEADER = "X-Meeting-Urgency"
INSTALLATION_HEADER = "X-Meeting-Installation"  # the first meeting after a general election (L2121-7)
MAX_PARSED = 1_000_000  # octets of a message parsed for its date: headers and text come before attachments
MAX_TEXT = 50_000  # characters of text read for dates: a convocation says its date near the top (and
# a text dense with dates takes about 0.2 s per 50,000 characters)


@dataclass(frozen=True)
class Convocation:
    """What the law says of one message: its meeting, the deadline and whether it was sent in time.

    The deadline is None when the meeting date or the sender's assembly is unknown: then nothing
    is claimed either way.
    """

    meeting: MeetingDate | None
    assembly: Assembly | None
    urgent: bool
    received: dt.datetime  # aware: when the relay received it, the sending the law counts from
    installation: bool = False  # the first meeting after a general election (L2121-7)

    @property
    def deadline(self) -> Deadline | None:
        if self.meeting is None or self.assembly is None:
            return None
        return Deadline.for_meeting(
            self.meeting.date, self.assembly, urgent=self.urgent, installation=self.installation
        )

    @property
    def late(self) -> bool:
        deadline = self.deadline
        return deadline is not None and not deadline.on_time(self.received)

    @classmethod
    def of(cls, data: bytes, sender: str, received: dt.datetime, config: LawConfig) -> Convocation:
        """Read one message as received (``received`` aware) for a sender under ``config``."""
        message = parse(data[:MAX_PARSED])  # a cut multipart is only a defect to the parser
        return cls(
            meeting=meeting_date(message, sender_rule(config, sender), paris_date(received)),
            assembly=assembly_for(config, sender),
            urgent=_flag(message, URGENCY_HEADER),
            received=received,
            installation=_flag(message, INSTALLATION_HEADER),
        )


def _flag(message: Message, name: str) -> bool:
    return header(message, name).lower() in ("1", "yes", "true", "oui")


def parse(data: bytes) -> Message:
    """The message with raw headers (compat32): the few read here are decoded by :func:`header`, in a
    third of the time the default policy takes to build its header objects for every look-up."""
    return BytesParser(policy=policy.compat32).parsebytes(data)


def header(message: Message, name: str) -> str:
    """A header's value unfolded, its encoded words decoded (raw 8-bit as UTF-8); '' when absent."""
    raw = message.get(name)
    if raw is None:
        return ""
    try:
        text = "".join(
            chunk.decode(charset if charset and charset != "unknown-8bit" else "utf-8", "replace")
            if isinstance(chunk, bytes)
            else chunk
            for chunk, charset in decode_header(raw)
        )
    except (HeaderParseError, LookupError, ValueError):
        text = str(raw)
    return re.sub(r"\s*\r?\n[ \t]+", " ", text).strip()


def sender_rule(config: LawConfig, sender: str) -> LawSender | None:
    """The first [[law.senders]] rule for ``sender`` (its address, '@' and its domain, or '*')."""
    address = sender.lower()
    wanted = {"*", address, "@" + address.rpartition("@")[2]}
    return next((rule for rule in config.senders if rule.match.lower() in wanted), None)


def assembly_for(config: LawConfig, sender: str) -> Assembly | None:
    """The assembly a sender convokes: its rule's, else law.assembly; None when neither says."""
    rule = sender_rule(config, sender)
    name = rule.assembly if rule is not None and rule.assembly else config.assembly
    return Assembly(name) if name else None


def meeting_date(message: Message, rule: LawSender | None, today: dt.date) -> MeetingDate | None:
    found = header_date(header(message, MEETING_DATE_HEADER))
    if found is not None:
        return found
    subject = header(message, "Subject")
    text = message_text(message)
    if rule is not None and rule.meeting_date_pattern:
        found = pattern_date(rule.meeting_date_pattern, subject, text, today)
        if found is not None:
            return found
    return find_meeting_date(subject, text, today)


def header_date(value: str) -> MeetingDate | None:
    """An ISO 8601 date or date and time; an offset is turned into Paris time. Else None."""
    value = value.strip()
    if not value:
        return None
    try:
        if len(value) == 10:
            return MeetingDate(dt.date.fromisoformat(value), None, "header")
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(PARIS)
    return MeetingDate(moment.date(), moment.time().replace(second=0, microsecond=0), "header")


def pattern_date(pattern: str, subject: str, text: str, today: dt.date) -> MeetingDate | None:
    """The first match of a configured pattern (named groups day, month, year, hour, minute) that is a date."""
    compiled = re.compile(pattern, re.IGNORECASE)
    for segment in (subject, text):
        for m in compiled.finditer(segment):
            g = m.groupdict()
            date = read_date(g["day"], g["month"], g["year"], today)
            if date is not None:
                return MeetingDate(date, read_time(g.get("hour"), g.get("minute")), "rule")
    return None


def message_text(message: Message) -> str:
    """The message's text as a reader sees it: its plain part, else its HTML without tags."""
    parts: dict[str, str] = {}
    for part in message.walk():
        kind = part.get_content_type()
        if kind in ("text/plain", "text/html") and kind not in parts and part.get_content_disposition() != "attachment":
            parts[kind] = _content(part)
    if "text/plain" in parts:
        return parts["text/plain"][:MAX_TEXT]
    return _html_text(parts.get("text/html", ""))[:MAX_TEXT]


def _content(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:  # 8-bit text without a charset is UTF-8 more often than ASCII
        return payload.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


class _TextOfHTML(HTMLParser):
    _BREAKS = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "table", "td"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BREAKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BREAKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(data)


def _html_text(html: str) -> str:
    reader = _TextOfHTML()
    reader.feed(html)
    reader.close()
    return re.sub(r"[ \t]+", " ", "".join(reader.out))
