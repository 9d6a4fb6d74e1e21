"""relay.law.deadline: jours francs on Paris calendar dates, on the law's own examples and around
the dates where a naive count of hours or days goes wrong."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.law.deadline import PARIS, Assembly, Deadline, jours_francs, latest_sending_date

UTC = dt.UTC
D = dt.date


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    "assembly,urgent,installation,days",
    [
        (Assembly.COMMUNE_UNDER_3500, False, False, 3),
        (Assembly.COMMUNE, False, False, 5),
        (Assembly.EPCI, False, False, 5),
        (Assembly.SYNDICAT, False, False, 5),
        (Assembly.DEPARTEMENT, False, False, 12),
        (Assembly.REGION, False, False, 12),
        (Assembly.COMMUNE_UNDER_3500, True, False, 1),
        (Assembly.COMMUNE, True, False, 1),
        (Assembly.EPCI, True, False, 1),
        (Assembly.SYNDICAT, True, False, 1),
        # The code lets mayors and EPCI presidents shorten the time, not the presidents of départements or régions.
        (Assembly.DEPARTEMENT, True, False, 12),
        (Assembly.REGION, True, False, 12),
        # L2121-7: the first meeting after a general election, 3 jours francs in every commune.
        (Assembly.COMMUNE, False, True, 3),
        (Assembly.COMMUNE_UNDER_3500, False, True, 3),
        (Assembly.EPCI, False, True, 5),
        (Assembly.COMMUNE, True, True, 1),
    ],
)
def test_days_owed(assembly, urgent, installation, days):
    assert jours_francs(assembly, urgent=urgent, installation=installation) == days


def test_the_issue_example_friday_meeting_three_jours_francs_is_monday():
    deadline = Deadline.for_meeting(D(2026, 12, 18), Assembly.COMMUNE_UNDER_3500)
    assert deadline.latest == D(2026, 12, 14)
    assert deadline.latest.strftime("%A") == "Monday"


def test_the_issue_example_tuesday_15_december_five_jours_francs_is_wednesday_9():
    deadline = Deadline.for_meeting(D(2026, 12, 15), Assembly.COMMUNE)
    assert deadline.latest == D(2026, 12, 9)
    # Sent on the 9th at 23:59 in Paris: on time; at midnight: late.
    assert deadline.on_time(dt.datetime(2026, 12, 9, 23, 59, 59, tzinfo=PARIS))
    assert not deadline.on_time(dt.datetime(2026, 12, 10, 0, 0, tzinfo=PARIS))
    assert deadline.full_days_before(utc(2026, 12, 9, 8)) == 5
    assert deadline.full_days_before(utc(2026, 12, 10, 8)) == 4


def test_weekends_count_and_never_extend_the_time():
    # Monday 14 December 2026 with 3 jours francs: Thursday, Friday, Saturday, Sunday count; Wednesday 9th at the latest.
    deadline = Deadline.for_meeting(D(2026, 12, 14), Assembly.COMMUNE_UNDER_3500)
    assert deadline.latest == D(2026, 12, 10)


def test_urgency_one_jour_franc():
    deadline = Deadline.for_meeting(D(2026, 12, 15), Assembly.COMMUNE, urgent=True)
    assert (deadline.days, deadline.latest) == (1, D(2026, 12, 13))
    assert deadline.on_time(utc(2026, 12, 13, 22, 59))  # 23:59 in Paris (winter, UTC+1)
    assert not deadline.on_time(utc(2026, 12, 13, 23, 0))


def test_october_clock_change_the_sending_day_is_the_paris_day():
    # Summer time (UTC+2) until Sunday 25 October 2026 at 03:00.
    before = Deadline.for_meeting(D(2026, 10, 27), Assembly.COMMUNE_UNDER_3500)
    assert before.latest == D(2026, 10, 23)
    assert before.on_time(utc(2026, 10, 23, 21, 59))  # 23:59 CEST
    assert not before.on_time(utc(2026, 10, 23, 22, 0))  # 00:00 CEST on the 24th
    assert before.cutoff.astimezone(UTC) == utc(2026, 10, 23, 22, 0)
    # Winter time (UTC+1) from then on: the same UTC hour is still the 26th in Paris.
    after = Deadline.for_meeting(D(2026, 10, 30), Assembly.COMMUNE_UNDER_3500)
    assert after.latest == D(2026, 10, 26)
    assert after.on_time(utc(2026, 10, 26, 22, 59))
    assert not after.on_time(utc(2026, 10, 26, 23, 0))
    assert after.cutoff.astimezone(UTC) == utc(2026, 10, 26, 23, 0)


def test_october_clock_change_the_25_hour_day_counts_as_one_day():
    deadline = Deadline.for_meeting(D(2026, 10, 29), Assembly.COMMUNE_UNDER_3500)
    assert deadline.latest == D(2026, 10, 25)  # the 26th, 27th and 28th are the three days
    sent = utc(2026, 10, 24, 22, 30)  # 00:30 CEST on Sunday the 25th
    assert deadline.on_time(sent)
    assert deadline.full_days_before(sent) == 3


def test_march_clock_change():
    # Winter time until Sunday 28 March 2027 at 02:00, then UTC+2: a 23-hour day.
    deadline = Deadline.for_meeting(D(2027, 3, 31), Assembly.COMMUNE_UNDER_3500)
    assert deadline.latest == D(2027, 3, 27)
    assert deadline.cutoff.astimezone(UTC) == utc(2027, 3, 27, 23, 0)
    assert deadline.on_time(utc(2027, 3, 27, 22, 59))
    assert not deadline.on_time(utc(2027, 3, 27, 23, 0))
    after = Deadline.for_meeting(D(2027, 4, 2), Assembly.COMMUNE_UNDER_3500)
    assert after.latest == D(2027, 3, 29)
    assert after.cutoff.astimezone(UTC) == utc(2027, 3, 29, 22, 0)
    assert after.on_time(utc(2027, 3, 29, 21, 59))
    assert not after.on_time(utc(2027, 3, 29, 22, 0))
    sent = utc(2027, 3, 27, 23, 30)  # 01:30 CET on the 28th: three days (29th, 30th, 31st) before 1 April
    assert Deadline.for_meeting(D(2027, 4, 1), Assembly.COMMUNE_UNDER_3500).full_days_before(sent) == 3


def test_29_february():
    # 2028 is a leap year: 28 and 29 February and 1 March are the three days before 2 March.
    assert latest_sending_date(D(2028, 3, 2), 3) == D(2028, 2, 27)
    assert latest_sending_date(D(2027, 3, 2), 3) == D(2027, 2, 26)
    assert latest_sending_date(D(2028, 2, 29), 5) == D(2028, 2, 23)
    assert latest_sending_date(D(2028, 3, 6), 5) == D(2028, 2, 29)


def test_first_of_a_month_and_of_a_year():
    assert latest_sending_date(D(2026, 12, 1), 5) == D(2026, 11, 25)
    assert latest_sending_date(D(2027, 1, 1), 3) == D(2026, 12, 28)
    assert latest_sending_date(D(2027, 1, 4), 5) == D(2026, 12, 29)
    assert latest_sending_date(D(2027, 1, 13), 12) == D(2026, 12, 31)
    assert latest_sending_date(D(2026, 12, 3), 1) == D(2026, 12, 1)


def test_a_naive_time_is_refused():
    with pytest.raises(ValueError):
        Deadline.for_meeting(D(2026, 12, 15), Assembly.COMMUNE).on_time(dt.datetime(2026, 12, 9, 12))


@settings(max_examples=500, deadline=None)
@given(
    meeting=st.dates(min_value=D(1990, 1, 1), max_value=D(2090, 12, 31)),
    assembly=st.sampled_from(list(Assembly)),
    urgent=st.booleans(),
    installation=st.booleans(),
)
def test_the_latest_date_is_n_plus_one_calendar_days_before(meeting, assembly, urgent, installation):
    deadline = Deadline.for_meeting(meeting, assembly, urgent=urgent, installation=installation)
    assert deadline.days >= 1
    assert (meeting - deadline.latest).days == deadline.days + 1
    # Counted the long way: the days strictly between the latest date and the meeting are the days owed.
    between = [deadline.latest + dt.timedelta(days=i) for i in range(1, 400)]
    assert sum(1 for day in between if deadline.latest < day < meeting) == deadline.days


@settings(max_examples=500, deadline=None)
@given(
    meeting=st.dates(min_value=D(2000, 1, 1), max_value=D(2080, 12, 31)),
    assembly=st.sampled_from(list(Assembly)),
    urgent=st.booleans(),
    offset=st.integers(min_value=-20 * 86400, max_value=2 * 86400),
)
def test_on_time_means_enough_whole_paris_days_in_between(meeting, assembly, urgent, offset):
    deadline = Deadline.for_meeting(meeting, assembly, urgent=urgent)
    sent = deadline.cutoff.astimezone(UTC) + dt.timedelta(seconds=offset)
    whole_days = (meeting - sent.astimezone(PARIS).date()).days - 1
    assert deadline.on_time(sent) == (whole_days >= deadline.days) == (offset < 0)
    assert deadline.full_days_before(sent) == whole_days


def test_the_configuration_offers_exactly_the_assemblies_the_law_knows():
    from relay.config import ASSEMBLIES

    assert set(ASSEMBLIES) == {a.value for a in Assembly}


@pytest.mark.parametrize("name", ["__init__", "deadline", "dates", "meeting", "verdict", "register", "evidence", "reminders"])
def test_the_law_package_is_pure(name):
    """No I/O, clock or randomness in relay/law: callers pass the times in (relay.smtp.convocation)."""
    import ast
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / "relay" / "law" / f"{name}.py").read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {
        "asyncio",
        "aiosqlite",
        "aiohttp",
        "aiosmtpd",
        "aiosmtplib",
        "socket",
        "time",
        "random",
        "secrets",
        "os",
    }
    assert not imported & forbidden
    assert "os.environ" not in source and ".now(" not in source and ".today(" not in source


def test_installation_applies_to_communes_only():
    assert Deadline.for_meeting(D(2026, 12, 15), Assembly.COMMUNE, installation=True).installation
    epci = Deadline.for_meeting(D(2026, 12, 15), Assembly.EPCI, installation=True)
    assert not epci.installation and epci.days == 5
