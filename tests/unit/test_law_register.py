"""relay.law.register: on time per member, and the paragraph for the register of deliberations."""

from __future__ import annotations

import datetime as dt

import pytest

from relay.french import french_date, french_time
from relay.law.dates import MeetingDate
from relay.law.deadline import PARIS, Assembly
from relay.law.meeting import Convocation
from relay.law.register import Member, members_of, status, view, wording

MEETING = MeetingDate(dt.date(2026, 12, 15), dt.time(18, 30), "subject")
SENT = dt.datetime(2026, 12, 9, 10, 2, tzinfo=PARIS)  # the last lawful day for 5 jours francs
AS_OF = dt.datetime(2026, 12, 11, 12, 0, tzinfo=PARIS)


def paris(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=PARIS)


MEMBERS = [
    Member("a@example.net", paris(2026, 12, 9, 10, 3), paris(2026, 12, 9, 20, 0)),
    Member("b@example.net", paris(2026, 12, 10, 0, 30), None),  # deferred past midnight: not in time
    Member("c@example.net", None, None),
]


@pytest.mark.parametrize(
    "day,text",
    [(dt.date(2027, 3, 1), "lundi 1er mars 2027"), (dt.date(2026, 12, 15), "mardi 15 décembre 2026")],
)
def test_french_date(day, text):
    assert french_date(day) == text


def test_french_time():
    assert (french_time(dt.time(18, 30)), french_time(dt.time(9, 0)), french_time(dt.time(9, 5))) == (
        "18 h 30", "9 h", "9 h 05",
    )  # fmt: skip


def test_on_time_wording():
    convocation = Convocation(MEETING, Assembly.COMMUNE, False, SENT)
    assert wording(convocation, MEMBERS, AS_OF) == (
        "Le mercredi 9 décembre 2026 à 10 h 02, la convocation à la séance du mardi 15 décembre 2026 à 18 h 30"
        " a été adressée par voie électronique, par l'intermédiaire du relais de messagerie certifiée"
        " Estampille, à 3 membres. Elle a été envoyée 5 jours francs avant la séance, le délai légal étant de"
        " 5 jours francs (article L. 2121-12 du code général des collectivités territoriales). Elle a été"
        " remise dans les délais à 1 membre sur 3. Au vendredi 11 décembre 2026, 1 membre sur 3 en a accusé"
        " réception."
    )


def test_late_wording_names_the_latest_date():
    convocation = Convocation(MEETING, Assembly.COMMUNE_UNDER_3500, False, paris(2026, 12, 12, 9, 0))
    text = wording(convocation, MEMBERS, AS_OF)
    assert "Elle a été envoyée 2 jours francs avant la séance, alors que le délai légal est de 3 jours francs" in text
    assert "(article L. 2121-11 du code" in text and "au plus tard le vendredi 11 décembre 2026." in text


def test_urgency_and_sending_on_the_day():
    urgent = Convocation(MEETING, Assembly.EPCI, True, paris(2026, 12, 13, 9, 0))
    text = wording(urgent, MEMBERS, AS_OF)
    assert "1 jour franc avant la séance, le délai légal étant de 1 jour franc (article L. 2121-12 et L. 5211-1" in text
    assert "abrégé pour cause d'urgence, ce dont il est rendu compte à l'ouverture de la séance." in text
    same_day = Convocation(MEETING, Assembly.COMMUNE, False, paris(2026, 12, 15, 9, 0))
    assert "envoyée le jour de la séance ou après celle-ci, alors que" in wording(same_day, MEMBERS, AS_OF)


def test_unknown_meeting_or_assembly_claims_no_deadline():
    unknown = Convocation(None, Assembly.COMMUNE, False, SENT)
    text = wording(unknown, MEMBERS, AS_OF)
    assert text.startswith("Le mercredi 9 décembre 2026 à 10 h 02, la convocation a été adressée")
    assert "le délai de convocation n'a pas été vérifié" in text and "dans les délais" not in text
    no_assembly = Convocation(MEETING, None, False, SENT)
    assert "Le délai légal de convocation de l'assemblée n'étant pas configuré" in wording(no_assembly, MEMBERS, AS_OF)
    assert status(unknown) == status(no_assembly) == "unknown"


def test_acknowledgments_after_as_of_are_not_counted():
    convocation = Convocation(MEETING, Assembly.COMMUNE, False, SENT)
    assert "Au mercredi 9 décembre 2026, 0 membre sur 3 en a accusé réception." in wording(
        convocation, MEMBERS, paris(2026, 12, 9, 19, 0)
    )


def test_view_per_member():
    law = view(Convocation(MEETING, Assembly.COMMUNE, False, SENT), MEMBERS, AS_OF)
    assert law["status"] == "on_time" and law["full_days_before_meeting"] == 5
    assert [(m["delivered_in_time"], m["acknowledged_in_time"]) for m in law["members"]] == [
        (True, True), (False, None), (None, None),
    ]  # fmt: skip


def test_members_of_a_message_view():
    message = {
        "recipients": [
            {"recipient": "a@x", "handoff": {"record": {"code": 250, "handed_at": "2026-12-09T09:03:00.000000Z"}},
             "acknowledgment": {"at": "2026-12-09T19:00:00.000000Z"}},
            {"recipient": "b@x", "handoff": {"record": {"code": 451, "handed_at": "2026-12-09T09:03:00.000000Z"}},
             "acknowledgment": None},
            {"recipient": "c@x", "handoff": None, "acknowledgment": None},
        ]
    }  # fmt: skip
    assert members_of(message) == [
        Member("a@x", dt.datetime(2026, 12, 9, 9, 3, tzinfo=dt.UTC), dt.datetime(2026, 12, 9, 19, tzinfo=dt.UTC)),
        Member("b@x", None, None),  # refused for now: not delivered
        Member("c@x", None, None),
    ]
