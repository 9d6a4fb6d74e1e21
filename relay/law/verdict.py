"""What is said of a late convocation: the SMTP refusal, the log line and the webhook event."""

from __future__ import annotations

from typing import Any

from relay.law.deadline import Deadline
from relay.law.meeting import Convocation


def refusal(deadline: Deadline) -> str:
    """The 550 answered at DATA under ``[law] refuse_late``: the sending tool shows it at once."""
    return (
        f"550 5.7.0 Convocation late: the meeting of {deadline.meeting.isoformat()} is owed {deadline.days}"
        f" jours francs ({deadline.assembly.value}{', urgency' if deadline.urgent else ''}"
        f"{', installation' if deadline.installation else ''}); the deadline"
        f" was {deadline.latest.isoformat()} at 23:59 Europe/Paris"
    )


def summary(convocation: Convocation) -> str:
    """One line for the log: meeting, days owed, latest date and when it came."""
    deadline = convocation.deadline
    if deadline is None:
        return "no deadline known"
    return (
        f"meeting={deadline.meeting.isoformat()} assembly={deadline.assembly.value} urgent={deadline.urgent}"
        f" jours_francs={deadline.days} latest={deadline.latest.isoformat()}"
        f" received={convocation.received.isoformat(timespec='seconds')}"
        f" full_days_left={deadline.full_days_before(convocation.received)}"
    )


def event(convocation: Convocation, **subject: Any) -> dict[str, Any]:
    """The ``convocation.late`` webhook payload: the message's names (``subject``) and the law's figures."""
    deadline = convocation.deadline
    if deadline is None:
        raise ValueError("a convocation without a deadline cannot be late")
    meeting = convocation.meeting
    return {
        **subject,
        "meeting": meeting.isoformat() if meeting else None,
        "meeting_source": meeting.source if meeting else None,
        "assembly": deadline.assembly.value,
        "urgent": deadline.urgent,
        "installation": deadline.installation,
        "jours_francs": deadline.days,
        "latest_sending_date": deadline.latest.isoformat(),
        "received_at": convocation.received.isoformat(timespec="seconds"),
        "full_days_before_meeting": deadline.full_days_before(convocation.received),
    }
