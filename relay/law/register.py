"""The register's view of one convocation: on time or not, per member, and the French paragraph
the secretary pastes into the register of deliberations (L2121-10: the convocation is recorded
there). Used by the admin page, the API and the attestation; pure: ``as_of`` is passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.french import french_date, french_time
from relay.law.deadline import PARIS, Assembly, Deadline, paris_date
from relay.law.meeting import Convocation

ARTICLES = {
    Assembly.COMMUNE_UNDER_3500: "L. 2121-11",
    Assembly.COMMUNE: "L. 2121-12",
    Assembly.EPCI: "L. 2121-12 et L. 5211-1",
    Assembly.SYNDICAT: "L. 2121-12 et L. 5211-1",
    Assembly.DEPARTEMENT: "L. 3121-19",
    Assembly.REGION: "L. 4132-18",
}
MEANS = "par voie électronique, par l'intermédiaire du relais de messagerie certifiée Estampille"


@dataclass(frozen=True)
class Member:
    """One recipient of the convocation: when the copy was handed on, and acknowledged (aware times)."""

    recipient: str
    delivered_at: dt.datetime | None
    acknowledged_at: dt.datetime | None
    reminded_at: tuple[dt.datetime, ...] = ()  # reminders queued to the member, oldest first


def french_moment(instant: dt.datetime) -> str:
    local = instant.astimezone(PARIS)
    return f"{french_date(local.date())} à {french_time(local.time())}"


def article(deadline: Deadline) -> str:
    """The article of the CGCT that sets the days a deadline owes."""
    if deadline.installation and not deadline.urgent:
        return "L. 2121-7"  # the first meeting after a general election
    return ARTICLES[deadline.assembly]


def _days(n: int) -> str:
    return f"{n} jour{'s' if abs(n) > 1 else ''} franc{'s' if abs(n) > 1 else ''}"


def _in_time(deadline: Deadline | None, instant: dt.datetime | None) -> bool | None:
    return None if deadline is None or instant is None else deadline.on_time(instant)


def status(convocation: Convocation) -> str:
    """'late', 'on_time', or 'unknown' (no meeting date, or no assembly configured for the sender)."""
    if convocation.deadline is None:
        return "unknown"
    return "late" if convocation.late else "on_time"


def view(convocation: Convocation, members: Sequence[Member], as_of: dt.datetime) -> dict[str, Any]:
    """The JSON the API answers, the admin page shows and the attestation prints."""
    deadline = convocation.deadline
    meeting = convocation.meeting
    return {
        "meeting": None
        if meeting is None
        else {
            "date": meeting.date.isoformat(),
            "time": meeting.time.isoformat("minutes") if meeting.time else None,
            "source": meeting.source,
        },
        "assembly": convocation.assembly.value if convocation.assembly else None,
        "urgent": convocation.urgent,
        "installation": convocation.installation,
        "deadline": None
        if deadline is None
        else {
            "jours_francs": deadline.days,
            "latest_sending_date": deadline.latest.isoformat(),
            "article": article(deadline),
        },
        "status": status(convocation),
        "received_at": convocation.received.isoformat(timespec="seconds"),
        "full_days_before_meeting": deadline.full_days_before(convocation.received) if deadline else None,
        "members": [
            {
                "recipient": m.recipient,
                "delivered_at": m.delivered_at.isoformat(timespec="seconds") if m.delivered_at else None,
                "acknowledged_at": m.acknowledged_at.isoformat(timespec="seconds") if m.acknowledged_at else None,
                "delivered_in_time": _in_time(deadline, m.delivered_at),
                "acknowledged_in_time": _in_time(deadline, m.acknowledged_at),
                "reminders": [r.isoformat(timespec="seconds") for r in m.reminded_at],
            }
            for m in members
        ],
        "wording": wording(convocation, members, as_of),
    }


def wording(convocation: Convocation, members: Sequence[Member], as_of: dt.datetime) -> str:
    """The paragraph for the register of deliberations (French), as things stand at ``as_of``."""
    total = len(members)
    meeting = convocation.meeting
    sent = french_moment(convocation.received)
    if meeting is None:
        what = "la convocation"
    else:
        at = f" à {french_time(meeting.time)}" if meeting.time else ""
        what = f"la convocation à la séance du {french_date(meeting.date)}{at}"
    parts = [f"Le {sent}, {what} a été adressée {MEANS}, à {total} membre{'s' if total > 1 else ''}."]
    deadline = convocation.deadline
    if meeting is None:
        parts.append("La date de la séance n'étant pas connue du relais, le délai de convocation n'a pas été vérifié.")
    elif deadline is None:
        parts.append("Le délai légal de convocation de l'assemblée n'étant pas configuré, il n'a pas été vérifié.")
    else:
        before = deadline.full_days_before(convocation.received)
        law = f"{_days(deadline.days)} (article {article(deadline)} du code général des collectivités territoriales)"
        if deadline.urgent:
            law += ", abrégé pour cause d'urgence, ce dont il est rendu compte à l'ouverture de la séance"
        sent_before = f"{_days(before)} avant la séance" if before >= 0 else "le jour de la séance ou après celle-ci"
        if convocation.late:
            parts.append(
                f"Elle a été envoyée {sent_before}, alors que le délai légal est de {law} :"
                f" elle devait l'être au plus tard le {french_date(deadline.latest)}."
            )
        else:
            parts.append(f"Elle a été envoyée {sent_before}, le délai légal étant de {law}.")
        in_time = sum(1 for m in members if _in_time(deadline, m.delivered_at))
        parts.append(f"Elle a été remise dans les délais à {in_time} membre{'s' if in_time > 1 else ''} sur {total}.")
    acknowledged = sum(1 for m in members if m.acknowledged_at is not None and m.acknowledged_at <= as_of)
    parts.append(
        f"Au {french_date(paris_date(as_of))}, {acknowledged} membre{'s' if acknowledged > 1 else ''} sur {total}"
        f" en {'ont' if acknowledged > 1 else 'a'} accusé réception."
    )
    return " ".join(parts)


def members_of(message: dict[str, Any], reminders: Mapping[str, Sequence[float]] | None = None) -> list[Member]:
    """The members of a message as ``relay.proof.gather.message_json`` shows it: a copy counts as
    delivered when the upstream took it (a 2xx hand-off), acknowledged at its receipt's time;
    ``reminders``: the Unix times of the reminders queued to each recipient."""
    out = []
    for r in message["recipients"]:
        handoff = (r.get("handoff") or {}).get("record") or {}
        delivered = handoff.get("handed_at") if 200 <= int(handoff.get("code") or 0) < 300 else None
        ack = (r.get("acknowledgment") or {}).get("at")
        reminded = tuple(dt.datetime.fromtimestamp(t, dt.UTC) for t in (reminders or {}).get(r["recipient"], ()))
        out.append(Member(r["recipient"], _instant(delivered), _instant(ack), reminded))
    return out


def _instant(iso: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(iso) if iso else None
