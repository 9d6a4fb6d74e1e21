"""relay.law.dates: the meeting date read from French convocations, or "unknown", never a wrong date."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest

from relay.law.dates import MeetingDate, find_meeting_date, read_date

CORPORA = sorted((Path(__file__).resolve().parents[1] / "corpus").glob("meeting-dates*.toml"))
CASES = [case for path in CORPORA for case in tomllib.loads(path.read_text(encoding="utf-8"))["case"]]


def test_the_corpus_has_the_phrasings_the_issue_asks_for():
    assert len(CORPORA) == 4 and len(CASES) >= 110
    texts = [c["subject"] + "\n" + c["text"] for c in CASES]
    assert sum("1er" in t for t in texts) >= 3
    assert sum("18 h 30" in t for t in texts) >= 2
    assert sum("/2026" in t for t in texts) >= 3
    assert sum(not c["expected"] for c in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_each_phrasing(case):
    found = find_meeting_date(case["subject"], case["text"], dt.date.fromisoformat(case["received"]))
    assert (found.isoformat() if found else "") == case["expected"], case.get("note", "")


def test_the_subject_is_named_as_the_source():
    found = find_meeting_date("Convocation CM 15/12/2026", "Ordre du jour joint.", dt.date(2026, 12, 1))
    assert found == MeetingDate(dt.date(2026, 12, 15), None, "subject")
    found = find_meeting_date("Convocation", "Séance du 15/12/2026.", dt.date(2026, 12, 1))
    assert found is not None and found.source == "text"


@pytest.mark.parametrize(
    "day,month,year,today,weekday,expected",
    [
        ("1er", "mars", "2027", dt.date(2027, 2, 1), None, dt.date(2027, 3, 1)),
        ("15", "12", "26", dt.date(2026, 12, 1), None, dt.date(2026, 12, 15)),
        ("15", "déc", None, dt.date(2026, 12, 1), "mardi", dt.date(2026, 12, 15)),
        ("15", "DÉCEMBRE", None, dt.date(2026, 12, 1), "Mercredi", None),
        # Without a year: the occurrence nearest the message, so a date just past stays past.
        ("10", "novembre", None, dt.date(2026, 12, 1), None, dt.date(2026, 11, 10)),
        ("11", "janvier", None, dt.date(2026, 12, 20), None, dt.date(2027, 1, 11)),
        ("30", "juin", None, dt.date(2026, 12, 31), None, None),  # half a year either way: cannot tell
        ("15", "avril", None, dt.date(2026, 12, 1), None, None),
        ("29", "février", "2027", dt.date(2027, 1, 1), None, None),
        ("0", "mars", "2027", dt.date(2027, 1, 1), None, None),
        ("12", "13", "2027", dt.date(2027, 1, 1), None, None),
    ],
)
def test_read_date(day, month, year, today, weekday, expected):
    assert read_date(day, month, year, today, weekday) == expected


def test_dates_written_keeps_every_valid_date_in_order():
    from relay.law.dates import dates_written

    text = "PV du 10 novembre 2026 ; séance le mercredi 15 décembre 2026 ; réponse avant le 9/12/2026 ; 31/11/2026"
    assert dates_written(text, dt.date(2026, 12, 1)) == [dt.date(2026, 11, 10), dt.date(2026, 12, 9)]
