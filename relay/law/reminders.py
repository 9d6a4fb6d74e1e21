"""Reminders of a convocation to the members who have not acknowledged it: when one is due, and
the message itself (a message of its own: new Message-ID, ``References`` to the convocation, and
the member's same acknowledgment link, so that acknowledging from it acknowledges the convocation).

Pure: the caller passes the time, the member's certified copy and the new Message-ID.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from email import policy, utils
from email.message import EmailMessage

from relay.config import RemindersConfig
from relay.french import french_date, french_time
from relay.law.dates import MeetingDate
from relay.law.deadline import PARIS
from relay.law.meeting import header, message_text, parse
from relay.law.register import french_moment

SUBJECT_PREFIX = "Rappel : "


@dataclass(frozen=True)
class ReminderPolicy:
    """When reminders are due: ``after`` the convocation was received (one each), and never within
    ``stop_before`` of the meeting's start."""

    after: tuple[dt.timedelta, ...]
    stop_before: dt.timedelta

    @classmethod
    def from_config(cls, config: RemindersConfig) -> ReminderPolicy:
        return cls(
            after=tuple(dt.timedelta(hours=h) for h in config.after_hours),
            stop_before=dt.timedelta(hours=config.stop_before_hours),
        )


def meeting_start(meeting: MeetingDate) -> dt.datetime:
    """The meeting's start in Paris; midnight of its day when its time is unknown (the earliest it can be)."""
    return dt.datetime.combine(meeting.date, meeting.time or dt.time(), tzinfo=PARIS)


def too_late(meeting: MeetingDate, stop_before: dt.timedelta, now: dt.datetime) -> bool:
    """No reminder (scheduled or asked for by an admin) this close to the meeting, nor after it."""
    return now >= meeting_start(meeting) - stop_before


def due(
    reminder_policy: ReminderPolicy,
    *,
    received: dt.datetime,
    meeting: MeetingDate | None,
    acknowledged: bool,
    sent: int,
    now: dt.datetime,
) -> bool:
    """Whether the next scheduled reminder (``sent`` were already) is due for one member at ``now``."""
    if acknowledged or meeting is None or sent >= len(reminder_policy.after):
        return False
    return now >= received + reminder_policy.after[sent] and not too_late(meeting, reminder_policy.stop_before, now)


def ack_link(copy: bytes, public_url: str) -> str | None:
    """The acknowledgment link in a member's certified copy (its text, decoded), or None."""
    found = re.search(re.escape(public_url.rstrip("/")) + r"/a/[A-Za-z0-9_-]+", message_text(parse(copy)))
    return found.group(0) if found else None


def reminder_message(
    copy: bytes,
    *,
    recipient: str,
    link: str,
    message_id: str,
    now: dt.datetime,
    received: dt.datetime,
    meeting: MeetingDate | None,
) -> bytes:
    """The reminder to ``recipient``, from the sender of the convocation whose certified copy is ``copy``."""
    original = parse(copy)
    subject = header(original, "Subject")
    reminder = EmailMessage(policy=policy.SMTP)
    reminder["From"] = header(original, "From")
    reminder["To"] = recipient
    reminder["Subject"] = SUBJECT_PREFIX + subject
    reminder["Date"] = utils.format_datetime(now.astimezone(PARIS))
    reminder["Message-ID"] = message_id
    references = header(original, "Message-ID")
    if references:
        reminder["In-Reply-To"] = references
        reminder["References"] = references
    when = ""
    if meeting is not None:
        at = f" à {french_time(meeting.time)}" if meeting.time else ""
        when = f", pour la séance du {french_date(meeting.date)}{at}"
    reminder.set_content(
        "Bonjour,\n\n"
        f"Vous n'avez pas encore accusé réception de la convocation « {subject} » qui vous a été adressée"
        f" le {french_moment(received)}{when}.\n\n"
        "Pour en accuser réception, ouvrez ce lien et appuyez sur le bouton de la page :\n"
        f"{link}\n\n"
        "Ce rappel est envoyé automatiquement par le relais de messagerie certifiée ; il porte le même lien"
        " que la convocation.\n",
        charset="utf-8",
    )
    return reminder.as_bytes()
