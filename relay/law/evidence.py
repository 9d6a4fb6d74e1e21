"""The evidence record of an admin setting or correcting a convocation's meeting date.

Anchored like every record (its digest is a leaf), and linked to the submission it is about:
who set it, when, through what (the admin page or the API), the values before and after.
"""

from __future__ import annotations

from relay.evidence.records import Record
from relay.law.meeting import Convocation

MAX_NAME = 200  # characters of the name an admin gives; the record is not the place for an essay


def _state(convocation: Convocation) -> dict[str, object]:
    meeting = convocation.meeting
    return {
        "meeting": meeting.isoformat() if meeting else None,
        "source": meeting.source if meeting else None,
        "urgent": convocation.urgent,
        "installation": convocation.installation,
    }


def meeting_record(
    *, submission: str, old: Convocation, new: Convocation, set_by: str, via: str, set_at: str
) -> Record:
    """``submission``: the submission record's digest; ``via``: 'admin' (page) or 'api'."""
    return Record.from_fields(
        {
            "type": "meeting_date",
            "submission": submission,
            "old": _state(old),
            "new": _state(new),
            "set_by": set_by[:MAX_NAME],
            "via": via,
            "set_at": set_at,
        }
    )
