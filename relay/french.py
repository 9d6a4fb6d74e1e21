"""Dates and times written out in French, as the register of deliberations and the attestation
write them ("mardi 15 décembre 2026", "18 h 30"). Pure: the caller passes the date or time."""

from __future__ import annotations

import datetime as dt

MONTHS_FR = (
    "janvier", "février", "mars", "avril", "mai", "juin",
    "juillet", "août", "septembre", "octobre", "novembre", "décembre",
)  # fmt: skip
WEEKDAYS_FR = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")


def french_date(day: dt.date) -> str:
    """'mardi 15 décembre 2026', 'lundi 1er mars 2027'."""
    number = "1er" if day.day == 1 else str(day.day)
    return f"{WEEKDAYS_FR[day.weekday()]} {number} {MONTHS_FR[day.month - 1]} {day.year}"


def french_time(time: dt.time) -> str:
    """'18 h 30', '9 h'."""
    return f"{time.hour} h {time.minute:02d}" if time.minute else f"{time.hour} h"
