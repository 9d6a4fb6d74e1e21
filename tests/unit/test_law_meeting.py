"""relay.law.meeting: the meeting date of a message from its header, a sender's rule or its words,
and the deadline its sender's assembly owes."""

from __future__ import annotations

import datetime as dt

import pytest

from relay.config import Config, LawConfig, LawSender
from relay.errors import ConfigError
from relay.law.dates import MeetingDate
from relay.law.deadline import Assembly
from relay.law.meeting import Convocation, header_date, message_text, parse

RECEIVED = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def mail(subject: str, body: str, *headers: str, html: bool = False) -> bytes:
    kind = "text/html" if html else "text/plain"
    head = [
        "From: mairie@saint-martin.fr",
        "To: elus@saint-martin.fr",
        f"Subject: {subject}",
        "MIME-Version: 1.0",
        f"Content-Type: {kind}; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


COMMUNE = LawConfig(assembly="commune")


@pytest.mark.parametrize(
    "value,expected",
    [
        ("2026-12-15", MeetingDate(dt.date(2026, 12, 15), None, "header")),
        ("2026-12-15T18:30", MeetingDate(dt.date(2026, 12, 15), dt.time(18, 30), "header")),
        ("2026-12-15 18:30:00", MeetingDate(dt.date(2026, 12, 15), dt.time(18, 30), "header")),
        # An offset is turned into Paris time: 23:30 UTC on the 14th is 00:30 on the 15th in Paris.
        ("2026-12-14T23:30:00Z", MeetingDate(dt.date(2026, 12, 15), dt.time(0, 30), "header")),
        ("2026-06-14T22:30:00+00:00", MeetingDate(dt.date(2026, 6, 15), dt.time(0, 30), "header")),
        ("15/12/2026", None),
        ("2026-02-30", None),
        ("", None),
    ],
)
def test_header_date(value, expected):
    assert header_date(value) == expected


def test_the_header_wins_over_the_words():
    data = mail("Convocation du 15 décembre 2026", "Séance du 15 décembre 2026.", "X-Meeting-Date: 2026-12-17")
    convocation = Convocation.of(data, "mairie@saint-martin.fr", RECEIVED, COMMUNE)
    assert convocation.meeting == MeetingDate(dt.date(2026, 12, 17), None, "header")


def test_an_unreadable_header_leaves_the_words():
    data = mail("Convocation du 15 décembre 2026", "", "X-Meeting-Date: mardi prochain")
    convocation = Convocation.of(data, "mairie@saint-martin.fr", RECEIVED, COMMUNE)
    assert convocation.meeting == MeetingDate(dt.date(2026, 12, 15), None, "subject")


RULES = LawConfig(
    assembly="commune",
    senders=[
        LawSender(match="autre@example.fr", assembly="region"),
        LawSender(
            match="@saint-martin.fr",
            assembly="commune_under_3500",
            meeting_date_pattern=r"Réf\. CM-(?P<year>\d{4})(?P<month>\d\d)(?P<day>\d\d)",
        ),
    ],
)


def test_a_sender_rule_reads_what_the_built_in_reader_does_not():
    data = mail("Réf. CM-20261215", "Ordre du jour joint.")
    convocation = Convocation.of(data, "Mairie@Saint-Martin.fr", RECEIVED, RULES)
    assert convocation.meeting == MeetingDate(dt.date(2026, 12, 15), None, "rule")
    assert convocation.assembly is Assembly.COMMUNE_UNDER_3500
    assert convocation.deadline is not None and convocation.deadline.days == 3


def test_a_rule_that_finds_nothing_leaves_the_words():
    data = mail("Convocation", "Le conseil municipal se réunira le mardi 15 décembre 2026 à 18h30.")
    convocation = Convocation.of(data, "mairie@saint-martin.fr", RECEIVED, RULES)
    assert convocation.meeting == MeetingDate(dt.date(2026, 12, 15), dt.time(18, 30), "text")


def test_a_rule_with_a_month_name():
    config = LawConfig(
        senders=[LawSender(match="*", meeting_date_pattern=r"CM (?P<day>\d+) (?P<month>\w+) (?P<year>\d{4})")]
    )
    data = mail("CM 15 décembre 2026", "")
    assert Convocation.of(data, "x@y.fr", RECEIVED, config).meeting == MeetingDate(dt.date(2026, 12, 15), None, "rule")


def test_without_an_assembly_no_deadline_is_claimed():
    data = mail("Convocation du 15 décembre 2026", "")
    convocation = Convocation.of(data, "x@y.fr", RECEIVED, LawConfig())
    assert convocation.meeting is not None
    assert convocation.deadline is None and not convocation.late


def test_late_and_on_time_by_the_paris_day():
    data = mail("Convocation du 15 décembre 2026", "")
    # 5 jours francs: Wednesday 9 December at the latest, in Paris.
    on_time = Convocation.of(data, "x@y.fr", dt.datetime(2026, 12, 9, 22, 59, tzinfo=dt.UTC), COMMUNE)
    late = Convocation.of(data, "x@y.fr", dt.datetime(2026, 12, 9, 23, 0, tzinfo=dt.UTC), COMMUNE)
    assert not on_time.late and late.late
    assert late.deadline is not None and late.deadline.latest == dt.date(2026, 12, 9)


def test_installation_header():
    data = mail("Convocation du 15 décembre 2026", "", "X-Meeting-Installation: 1")
    # Sent on the 11th: 3 jours francs (12th, 13th, 14th) for the first meeting after an election, not 5.
    convocation = Convocation.of(data, "x@y.fr", dt.datetime(2026, 12, 11, 12, tzinfo=dt.UTC), COMMUNE)
    assert convocation.installation and convocation.deadline is not None
    assert convocation.deadline.days == 3 and not convocation.late


def test_urgency_header():
    data = mail("Convocation du 15 décembre 2026", "", "X-Meeting-Urgency: 1")
    convocation = Convocation.of(data, "x@y.fr", dt.datetime(2026, 12, 13, 12, tzinfo=dt.UTC), COMMUNE)
    assert convocation.urgent and convocation.deadline is not None and convocation.deadline.days == 1
    assert not convocation.late


def test_html_only_message():
    body = (
        "<html><head><style>p{color:red} 1er janvier 2027</style></head><body><p>Le conseil municipal"
        "</p><p>se r&eacute;unira le <b>mardi 15&nbsp;d&eacute;cembre 2026</b> &agrave; 18h30</p></body></html>"
    )
    data = mail("Convocation", body, html=True)
    assert "mardi 15\u00a0décembre 2026" in message_text(parse(data))
    convocation = Convocation.of(data, "x@y.fr", RECEIVED, COMMUNE)
    assert convocation.meeting == MeetingDate(dt.date(2026, 12, 15), dt.time(18, 30), "text")


def test_the_plain_part_of_an_alternative_is_read():
    data = (
        b"From: a@b.fr\r\nSubject: Convocation\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"S=E9ance du conseil le 15 d=E9cembre 2026 =E0 18h30.\r\n"
        b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>rien</p>\r\n--b--\r\n"
    )
    assert Convocation.of(data, "a@b.fr", RECEIVED, COMMUNE).meeting == MeetingDate(
        dt.date(2026, 12, 15), dt.time(18, 30), "text"
    )


@pytest.mark.parametrize(
    "pattern,message",
    [("(?P<day>\\d+", "not a regular expression"), ("(?P<day>\\d+)/(?P<month>\\d+)", "named groups")],
)
def test_a_bad_pattern_is_refused_when_the_configuration_loads(pattern, message):
    text = f"[[law.senders]]\nmatch = '*'\nmeeting_date_pattern = '{pattern}'\n"
    with pytest.raises(ConfigError, match=message):
        Config.from_toml(text)


def test_an_unknown_assembly_is_refused():
    with pytest.raises(ConfigError, match="law.assembly"):
        Config.from_toml("[law]\nassembly = 'mairie'\n")


def test_a_large_attachment_is_not_parsed_but_the_text_before_it_is_read():
    from email.message import EmailMessage

    from relay.law.meeting import MAX_PARSED

    msg = EmailMessage()
    msg["From"] = "mairie@saint-martin.fr"
    msg["Subject"] = "Convocation"
    msg.set_content("Le conseil municipal se réunira le mardi 15 décembre 2026 à 18h30.\n")
    msg.add_attachment(b"%PDF-1.7 " * (MAX_PARSED // 3), maintype="application", subtype="pdf", filename="odj.pdf")
    data = msg.as_bytes()
    assert len(data) > 3 * MAX_PARSED
    assert Convocation.of(data, "x@y.fr", RECEIVED, COMMUNE).meeting == MeetingDate(
        dt.date(2026, 12, 15), dt.time(18, 30), "text"
    )


def test_subjects_read_as_the_email_package_reads_them():
    """The raw headers decoded here (relay.law.meeting.header) read the Subject of every message of
    the corpus (encoded words, raw UTF-8, folding) as the default policy does."""
    import email
    from email import policy
    from pathlib import Path

    from relay.law.meeting import header

    corpus = sorted((Path(__file__).resolve().parents[1] / "corpus").glob("*.eml"))
    assert len(corpus) >= 30
    for path in corpus:
        data = path.read_bytes()
        expected = " ".join(str(email.message_from_bytes(data, policy=policy.default).get("Subject", "")).split())
        assert " ".join(header(parse(data), "Subject").split()) == expected, path.name
