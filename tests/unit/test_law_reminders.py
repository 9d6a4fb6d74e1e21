"""relay.law.reminders: when a reminder is due, and the reminder message itself."""

from __future__ import annotations

import datetime as dt
import email
from email import policy
from email.message import EmailMessage

import pytest

from relay.config import Config
from relay.errors import ConfigError
from relay.law.dates import MeetingDate
from relay.law.deadline import PARIS
from relay.law.meeting import message_text
from relay.law.reminders import ReminderPolicy, ack_link, due, meeting_start, reminder_message, too_late

RECEIVED = dt.datetime(2026, 12, 1, 10, 0, tzinfo=PARIS)
MEETING = MeetingDate(dt.date(2026, 12, 15), dt.time(18, 30), "subject")
POLICY = ReminderPolicy(after=(dt.timedelta(hours=48), dt.timedelta(hours=96)), stop_before=dt.timedelta(hours=24))
LINK = "https://accuse.mairie.example/a/AbC-123_xyz"


def is_due(
    now: dt.datetime, *, sent: int = 0, acknowledged: bool = False, meeting: MeetingDate | None = MEETING
) -> bool:
    return due(POLICY, received=RECEIVED, meeting=meeting, acknowledged=acknowledged, sent=sent, now=now)


def test_due_on_schedule_one_at_a_time():
    assert not is_due(RECEIVED + dt.timedelta(hours=47, minutes=59))
    assert is_due(RECEIVED + dt.timedelta(hours=48))
    assert not is_due(RECEIVED + dt.timedelta(hours=95), sent=1)
    assert is_due(RECEIVED + dt.timedelta(hours=96), sent=1)
    assert not is_due(RECEIVED + dt.timedelta(hours=200), sent=2)  # as many as after_hours has entries


def test_never_to_a_member_who_acknowledged_nor_without_a_meeting_date():
    assert not is_due(RECEIVED + dt.timedelta(hours=49), acknowledged=True)
    assert not is_due(RECEIVED + dt.timedelta(hours=49), meeting=None)


def test_never_within_stop_before_of_the_meeting_nor_after_it():
    start = dt.datetime(2026, 12, 15, 18, 30, tzinfo=PARIS)
    assert meeting_start(MEETING) == start
    assert is_due(start - dt.timedelta(hours=24, seconds=1))
    assert not is_due(start - dt.timedelta(hours=24))
    assert not is_due(start + dt.timedelta(days=1))
    assert too_late(MEETING, dt.timedelta(0), start) and not too_late(
        MEETING, dt.timedelta(0), start - dt.timedelta(seconds=1)
    )


def test_a_meeting_without_a_time_starts_at_midnight():
    assert meeting_start(MeetingDate(dt.date(2026, 12, 15), None, "text")) == dt.datetime(2026, 12, 15, tzinfo=PARIS)


def copy(cte: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mairie <convocations@mairie.example>"
    msg["To"] = "alice@example.net"
    msg["Subject"] = "Convocation au conseil municipal"
    msg["Message-ID"] = "<cm@mairie.example>"
    msg.set_content("Accusez réception : " + "x" * 70 + " " + LINK + "\nMerci.\n", cte=cte)
    return msg.as_bytes()


@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_the_link_is_found_in_the_decoded_copy(cte):
    assert ack_link(copy(cte), "https://accuse.mairie.example/") == LINK
    assert ack_link(copy(cte), "https://autre.example") is None


def test_the_reminder_message():
    data = reminder_message(
        copy("quoted-printable"),
        recipient="alice@example.net",
        link=LINK,
        message_id="<r1@relay.example>",
        now=dt.datetime(2026, 12, 3, 10, 0, tzinfo=PARIS),
        received=RECEIVED,
        meeting=MEETING,
    )
    msg = email.message_from_bytes(data, policy=policy.default)
    assert msg["From"] == "Mairie <convocations@mairie.example>" and msg["To"] == "alice@example.net"
    assert msg["Subject"] == "Rappel : Convocation au conseil municipal"
    assert (msg["Message-ID"], msg["References"], msg["In-Reply-To"]) == (
        "<r1@relay.example>", "<cm@mairie.example>", "<cm@mairie.example>",
    )  # fmt: skip
    text = message_text(msg)
    assert LINK in text
    assert "adressée le mardi 1er décembre 2026 à 10 h, pour la séance du mardi 15 décembre 2026 à 18 h 30." in text
    assert b"\r\n" in data and all(len(line) <= 998 for line in data.split(b"\r\n"))


@pytest.mark.parametrize("hours", ["[]", "[0]", "[96, 48]", "[48, 48]"])
def test_after_hours_must_increase(hours):
    if hours == "[]":
        assert Config.from_toml(f"[reminders]\nafter_hours = {hours}\n").reminders.after_hours == []
        return
    with pytest.raises(ConfigError, match="reminders.after_hours"):
        Config.from_toml(f"[reminders]\nafter_hours = {hours}\n")
