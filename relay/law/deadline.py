"""Deadlines in jours francs (CGCT), on Europe/Paris calendar dates.

A jour franc is a whole calendar day: neither the day of sending nor the day of the meeting
counts, and Saturdays, Sundays and holidays count without extending the time (Conseil d'État).
So a convocation owed N jours francs is on time when sent, in Paris, on the meeting's date minus
N + 1 days at the latest: for a Friday meeting with 3 jours francs, on Monday. Time runs from
the sending, not the receipt.

| assembly | jours francs | in urgency | source |
| --- | --- | --- | --- |
| commune_under_3500 | 3 | 1 | L2121-11 |
| commune (3,500 and over) | 5 | 1 | L2121-12 |
| epci, syndicat | 5 | 1 | L5211-1 (rules of communes of 3,500 and over) |
| departement | 12 | 12 | L3121-19 (no shortening in the code) |
| region | 12 | 12 | L4132-18 (no shortening in the code) |

The first meeting after a general election is owed 3 jours francs in every commune (L2121-7).
The 12 days of départements and régions are counted as jours francs too: the stricter reading,
so that a convocation this module calls on time is on time under either reading.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")
URGENCY_FLOOR = 1  # L2121-11, L2121-12: the mayor may shorten the time, never below one jour franc
INSTALLATION_DAYS = 3  # L2121-7: first meeting after a general election, every commune


class Assembly(enum.StrEnum):
    """The deliberating assemblies whose convocation times the CGCT sets."""

    COMMUNE_UNDER_3500 = "commune_under_3500"
    COMMUNE = "commune"
    EPCI = "epci"
    SYNDICAT = "syndicat"
    DEPARTEMENT = "departement"
    REGION = "region"

    @property
    def is_commune(self) -> bool:
        return self in (Assembly.COMMUNE_UNDER_3500, Assembly.COMMUNE)


_DAYS = {
    Assembly.COMMUNE_UNDER_3500: 3,
    Assembly.COMMUNE: 5,
    Assembly.EPCI: 5,
    Assembly.SYNDICAT: 5,
    Assembly.DEPARTEMENT: 12,
    Assembly.REGION: 12,
}
_SHORTENED = {Assembly.COMMUNE_UNDER_3500, Assembly.COMMUNE, Assembly.EPCI, Assembly.SYNDICAT}


def jours_francs(assembly: Assembly, *, urgent: bool = False, installation: bool = False) -> int:
    """The whole days owed between the sending and the meeting."""
    if urgent and assembly in _SHORTENED:
        return URGENCY_FLOOR
    if installation and assembly.is_commune:
        return INSTALLATION_DAYS
    return _DAYS[assembly]


def latest_sending_date(meeting: dt.date, days: int) -> dt.date:
    """The last calendar date a convocation owed ``days`` jours francs may be sent on."""
    return meeting - dt.timedelta(days=days + 1)


def paris_date(instant: dt.datetime) -> dt.date:
    """The calendar date in Paris of an aware instant (the law counts Paris days)."""
    if instant.tzinfo is None:
        raise ValueError("an aware datetime is needed: the law counts days in Paris, not in naive time")
    return instant.astimezone(PARIS).date()


@dataclass(frozen=True)
class Deadline:
    """What one convocation owes: its meeting date, the days owed and the latest sending date."""

    meeting: dt.date
    assembly: Assembly
    urgent: bool
    days: int
    latest: dt.date
    installation: bool = False  # the first meeting after a general election (L2121-7)

    @classmethod
    def for_meeting(
        cls, meeting: dt.date, assembly: Assembly, *, urgent: bool = False, installation: bool = False
    ) -> Deadline:
        days = jours_francs(assembly, urgent=urgent, installation=installation)
        return cls(
            meeting=meeting,
            assembly=assembly,
            urgent=urgent,
            days=days,
            latest=latest_sending_date(meeting, days),
            installation=installation and assembly.is_commune,
        )

    @property
    def cutoff(self) -> dt.datetime:
        """The first instant (aware, Paris) that is late: midnight after the latest date, whatever the offset."""
        return dt.datetime.combine(self.latest + dt.timedelta(days=1), dt.time(), tzinfo=PARIS)

    def full_days_before(self, instant: dt.datetime) -> int:
        """Jours francs between an instant (a sending, a delivery) and the meeting; negative past it."""
        return (self.meeting - paris_date(instant)).days - 1

    def on_time(self, instant: dt.datetime) -> bool:
        """Whether something done at ``instant`` (aware) leaves the jours francs owed."""
        return paris_date(instant) <= self.latest
