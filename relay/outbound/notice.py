"""The notice a sender gets when a copy fails for good: a DSN (relay.outbound.dsn) built from
the original's headers, stored like a submission of its own, and sent like any copy.

Two paths lead here: the outbound MTA refused the copy or gave up on it (relay.outbound.deliver),
or a delivery status report says the member's server refused it (relay.outbound.bounces), in
which case the report came to the bounce domain instead of the sender, who must still hear of it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from relay.certify.message import header_block
from relay.outbound import dsn
from relay.smtp.spool import Incoming, MessageFacts, Spool
from relay.store import Store


@dataclass(frozen=True)
class Bounced:
    """The copy that failed, as its submission and delivery rows give it."""

    mail_from: str  # the sender to notify
    recipient: str
    orcpt: str | None  # the client's ORCPT for this recipient
    data_sha256: str  # the message as received
    message_id: str | None
    received_at: float


async def stage_notice(store: Store, hostname: str, bounced: Bounced, *, status: str, diagnostic: str,
                       now: float) -> tuple[Incoming, MessageFacts, str]:
    """The notice's (incoming, facts, sha256), its bytes already staged: Spool.insert queues it."""
    original = await store.get_blob(bounced.data_sha256)
    failure = dsn.Failure(recipient=bounced.recipient, status=status, diagnostic=diagnostic,
                          original_recipient=bounced.orcpt)
    data = dsn.build_dsn(
        reporting_mta=hostname, sender=bounced.mail_from, failures=[failure], original_headers=header_block(original),
        original_message_id=bounced.message_id, arrival=utc(bounced.received_at), now=utc(now),
        boundary=f"estampille-{secrets.token_hex(12)}", message_id=f"<{secrets.token_hex(16)}@{hostname}>",
    )
    facts, sha = await Spool.stage(store, data)
    incoming = Incoming(data=data, mail_from="", recipients=(bounced.mail_from,), client_address="local", kind="dsn")
    return incoming, facts, sha


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)
