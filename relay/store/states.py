"""The states a delivery and an anchoring batch go through: the values the schema's CHECK
constraints allow (tests/integration/test_store_states.py compares them), which the store,
the workers and the metrics use by name."""

from __future__ import annotations

from enum import StrEnum


class DeliveryState(StrEnum):
    """One recipient's copy: queued, then sending, then delivered, deferred (retried) or failed."""

    QUEUED = "queued"
    SENDING = "sending"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    FAILED = "failed"


# Deliveries nothing more will happen to; their messages can be purged.
FINAL_STATES = (DeliveryState.DELIVERED, DeliveryState.FAILED)
# Deliveries the queue will (re)try when due.
DUE_STATES = (DeliveryState.QUEUED, DeliveryState.DEFERRED)
# Deliveries `estampille queue` lists, and `estampille queue retry` makes due now.
RETRYABLE_STATES = (DeliveryState.DEFERRED, DeliveryState.FAILED)


class BatchState(StrEnum):
    """An anchoring batch: its root submitted to calendars, pending in them, attested by one, then
    confirmed in Bitcoin once an attestation checks against its block header."""

    SUBMITTING = "submitting"
    PENDING = "pending"
    ATTESTED = "attested"  # a calendar's Bitcoin attestation, not yet checked against a block header
    CONFIRMED = "confirmed"


def sql_list(states: tuple[StrEnum, ...]) -> str:
    """``states`` as an SQL list of literals, for a query's ``IN (...)``: they are ours, never input."""
    return ", ".join(f"'{state.value}'" for state in states)
