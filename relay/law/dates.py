"""French dates in a convocation, and which one is the meeting's.

Convocation tools and secretaries write the meeting date in many ways: "séance du mardi
15 décembre 2026 à 18h30", "réunion le 15/12/2026 à 18 h", "Date : lundi 1er mars". A message
often holds other dates too: the minutes of the last meeting, the date the letter was signed, a
reply-by date. The reader finds every date, drops the ones whose words say they are not the
meeting ("procès-verbal de la séance du...", "Fait à ..., le ...", "avant le ..."), drops those
already past, and answers only when one date remains that the words tie to a meeting. Anything
else is "unknown" (None): a wrong date would make a lawful convocation look late, or a late one
look lawful, so a miss is always better than a guess.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from relay.french import WEEKDAYS_FR as WEEKDAYS

MONTHS = {
    "janvier": 1, "janv": 1, "février": 2, "fevrier": 2, "févr": 2, "fevr": 2, "fév": 2, "fev": 2,
    "mars": 3, "avril": 4, "avr": 4, "mai": 5, "juin": 6, "juillet": 7, "juil": 7, "août": 8,
    "aout": 8, "septembre": 9, "sept": 9, "octobre": 10, "oct": 10, "novembre": 11, "nov": 11,
    "décembre": 12, "decembre": 12, "déc": 12, "dec": 12,
}  # fmt: skip
HORIZON_DAYS = 400  # a meeting further ahead than this is not what a convocation announces
YEARLESS_SPAN_DAYS = 120  # a date without a year is the occurrence nearest the message, past or future

_MONTH = "|".join(sorted(map(re.escape, MONTHS), key=len, reverse=True))
_WEEKDAY = "|".join(WEEKDAYS)
# Every date starts with a digit: the lookahead lets the engine skip to digits (ten times faster on
# a convocation's text than trying each alternative at every character); a weekday before it is
# read apart (_WEEKDAY_BEFORE).
_DATE = re.compile(
    rf"""(?=[0-9])
    (?:
        \b(?P<day>\d{{1,2}})(?:\s*(?:er|ᵉʳ))?\s+(?P<month_name>{_MONTH})\b\.?(?:\s+(?P<year>\d{{4}})\b)?
      | (?<![\d/.-])(?P<nday>\d{{1,2}})[/.](?P<nmonth>\d{{1,2}})(?:[/.](?P<nyear>\d{{4}}|\d{{2}}))?(?![/.]?\d)
      | (?<![\w/.-])(?P<dday>\d{{1,2}})-(?P<dmonth>\d{{1,2}})-(?P<dyear>\d{{4}})(?![\w/-])
      | (?<![\d/.-])(?P<iyear>\d{{4}})-(?P<imonth>\d{{2}})-(?P<iday>\d{{2}})(?![\d-])
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_WEEKDAY_BEFORE = re.compile(rf"\b(?P<weekday>{_WEEKDAY})\b\.?,?\s+(?:le\s+)?\Z", re.IGNORECASE)
_WEEKDAY_SPAN = 20  # characters before a date where its weekday is looked for ("mercredi, le ")
_TIME_AFTER = re.compile(
    r"""\A(?:\s+prochain)?[\s,.:;–—-]{0,6}(?:heure\s*:\s*)?(?:(?:à|a|dès|des|de|vers)\s+)?
    (?P<hour>\d{1,2})\s*(?:heures?|h|:)\s*(?P<minute>[0-5]\d)?(?!\d)""",
    re.IGNORECASE | re.VERBOSE,
)
_TIME_BEFORE = re.compile(
    r"(?:à|a|dès)\s+(?P<hour>\d{1,2})\s*(?:heures?|h|:)\s*(?P<minute>[0-5]\d)?\s*,?\s*(?:le\s+)?\Z", re.IGNORECASE
)
_MEETING_WORDS = re.compile(
    r"séance|seance|réuni|reuni|se tiendra|aura lieu|conseil|comité|comite|assemblée|assemblee|bureau|session"
    r"|commission|convoqu|convocation|report|\bdate\s*:",
    re.IGNORECASE,
)
_OTHER_WORDS = re.compile(
    r"procès|proces|\bpv\b|compte[\s-]rendu|délibération|deliberation|arrêté|arrete|décret|decret|\bloi\b"
    r"|circulaire|envoy|envoi|transmis|fait à|fait a\b|avant le|au plus tard|jusqu|limite|réponse|reponse"
    r"|retour|publié|publie\b|publication|affich|en date du|précédent|precedent|dernière|derniere"
    r"|initialement|prévue? le|prevue? le|budget|exercice|depuis|\bdu\b[^.\n]{0,20}\bau\s*$",
    re.IGNORECASE,
)
_OTHER_AFTER = re.compile(r"[\s,]{0,3}(?:(?:est|a été|sera)\s+)?(?:report|annul|déplac|deplac|remplac)", re.IGNORECASE)
_WINDOW = 70  # characters before a date whose words say what the date is


@dataclass(frozen=True)
class MeetingDate:
    """A meeting's date, its time when known, and where it was read ('header', 'rule', 'subject', 'text', 'admin')."""

    date: dt.date
    time: dt.time | None
    source: str

    def isoformat(self) -> str:
        return f"{self.date.isoformat()}T{self.time.isoformat('minutes')}" if self.time else self.date.isoformat()


@dataclass(frozen=True)
class _Found:
    """One date expression: its date (None when impossible or self-contradicting), time, and what its words say."""

    date: dt.date | None
    time: dt.time | None
    meeting: bool  # words before it name a meeting
    other: bool  # words before it name something else (minutes, signature, reply-by)


def find_meeting_date(subject: str, text: str, today: dt.date) -> MeetingDate | None:
    """The meeting date a convocation announces, or None when it cannot be told for sure.

    ``today`` is the Paris date the message was received: dates before it are not the meeting's.
    """
    subject, text = _clean(subject), _clean(text)
    titled = _MEETING_WORDS.search(subject) is not None
    in_subject = [f for f in _found(subject, today) if not f.other]
    in_text = [f for f in _found(text, today) if not f.other]
    if any(f.date is None for f in in_subject + in_text):
        return None  # an impossible date or a weekday that contradicts it: the writer erred somewhere
    horizon = today + dt.timedelta(days=HORIZON_DAYS)
    in_subject = [f for f in in_subject if f.date is not None and today <= f.date <= horizon]
    in_text = [f for f in in_text if f.date is not None and today <= f.date <= horizon]
    # A subject naming a meeting names the one the convocation is for; the text may name others.
    named = {f.date for f in in_subject if f.meeting or titled}
    if named:
        return _pick(named, in_subject + in_text, "subject")
    meetings = {f.date for f in in_subject + in_text if f.meeting}
    # An untied date on the day of sending is the letter's own date ("Le 4 janvier 2027, le Maire").
    others = {f.date for f in in_subject + in_text if not f.meeting and f.date != today}
    if meetings:
        # A date nothing ties to a meeting ("ou, à défaut de quorum, le 18") may be the meeting as well.
        return _pick(meetings, in_text, "text") if others <= meetings else None
    if _MEETING_WORDS.search(subject + "\n" + text):
        return _pick(others, in_text, "text")
    return None


def _pick(dates: set[dt.date | None], found: list[_Found], source: str) -> MeetingDate | None:
    """The one date left, with the one time written beside it; None when more than one is left."""
    date = dates.pop() if len(dates) == 1 else None
    if date is None:
        return None
    times = {f.time for f in found if f.date == date and f.time is not None}
    return MeetingDate(date, times.pop() if len(times) == 1 else None, source)


def read_date(day: str, month: str, year: str | None, today: dt.date, weekday: str | None = None) -> dt.date | None:
    """One date from its parts as written ('1er', 'décembre' or '12', '26' or '2026' or none), or None."""
    day_n = int(re.sub(r"\D", "", day) or 0)
    month_n = MONTHS.get(month.lower().rstrip(".")) if not month.isdigit() else int(month)
    if month_n is None:
        return None
    if year:
        years = [int(year) + (2000 if len(year) == 2 else 0)]
    else:
        years = [today.year - 1, today.year, today.year + 1]
    candidates = []
    for y in years:
        try:
            candidates.append(dt.date(y, month_n, day_n))
        except ValueError:
            continue
    if not year:
        candidates = [c for c in candidates if abs((c - today).days) <= YEARLESS_SPAN_DAYS]
    if weekday:
        candidates = [c for c in candidates if WEEKDAYS[c.weekday()] == weekday.lower()]
    return candidates[0] if len(candidates) == 1 else None


def dates_written(segment: str, today: dt.date) -> list[dt.date]:
    """Every valid date written in ``segment``, in order, whatever its words say (a baseline's view)."""
    return [f.date for f in _found(_clean(segment), today) if f.date is not None]


def read_time(hour: str | None, minute: str | None) -> dt.time | None:
    if hour is None or not 0 <= int(hour) <= 23:
        return None
    return dt.time(int(hour), int(minute or 0))


def _clean(value: str) -> str:
    return value.replace("\u00a0", " ").replace("\u202f", " ").replace("\u2019", "'")


def _found(segment: str, today: dt.date) -> list[_Found]:
    out = []
    previous_end = 0
    for m in _DATE.finditer(segment):
        g = m.groupdict()
        named = _WEEKDAY_BEFORE.search(segment, max(previous_end, m.start() - _WEEKDAY_SPAN), m.start())
        weekday = named.group("weekday") if named else None
        start = named.start() if named else m.start()
        if g["nday"] is not None and g["nyear"] is None and weekday is None:
            previous_end = m.end()
            continue  # "15/12" alone is as often a ratio or a reference number as a date
        if g["day"] is not None:
            date = read_date(g["day"], g["month_name"], g["year"], today, weekday)
        elif g["nday"] is not None:
            date = read_date(g["nday"], g["nmonth"], g["nyear"], today, weekday)
        elif g["dday"] is not None:
            date = read_date(g["dday"], g["dmonth"], g["dyear"], today, weekday)
        else:
            date = read_date(g["iday"], g["imonth"], g["iyear"], today, weekday)
        before = segment[max(previous_end, start - _WINDOW) : start]
        before = re.split(r"[.!?]\s|\n\s*\n", before)[-1]
        out.append(
            _Found(
                date=date,
                time=_time_near(segment, start, m.end(), weekday is not None),
                meeting=_MEETING_WORDS.search(before) is not None,
                other=_OTHER_WORDS.search(before) is not None or _OTHER_AFTER.match(segment, m.end()) is not None,
            )
        )
        previous_end = m.end()
    return out


def _time_near(segment: str, start: int, end: int, has_weekday: bool) -> dt.time | None:
    after = _TIME_AFTER.match(segment[end : end + 40])
    if after is None and not has_weekday:
        after = _TIME_BEFORE.search(segment[max(0, start - 20) : start])
    return read_time(after.group("hour"), after.group("minute")) if after else None
