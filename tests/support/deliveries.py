"""Deliveries with acknowledgment tokens, made directly in a store, for tracker tests.

Stands in for intake + certify: one submission, one delivery to ``recipient``,
the submission and delivery records (chained) and one token, committed like the
relay does. Returns the token in clear, as it appears in the link.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from relay.evidence.records import delivery_record, iso_time, submission_record
from relay.store import Store


@dataclass(frozen=True)
class MadeDelivery:
    token: str
    delivery_id: int
    delivery_digest: str


async def make_delivery(
    store: Store,
    *,
    now: float,
    subject: str = "Convocation au conseil municipal du 12 décembre",
    mail_from: str = "mairie@commune.example",
    recipient: str = "elu@example.net",
    target_url: str | None = None,
) -> MadeDelivery:
    submission_id = uuid.uuid4().hex
    data = f"Subject: {subject}\r\n\r\nBonjour\r\n".encode()
    data_sha256 = hashlib.sha256(data).hexdigest()
    sub = submission_record(
        data_sha256=data_sha256, mail_from=mail_from, rcpt_to=[recipient], client_address="127.0.0.1",
        auth_user=None, tls=None, received_at=iso_time(now), message_id=f"<{submission_id}@commune.example>",
        attachments=[],
    )
    async with store.transaction() as db:
        await Store.insert_record(db, sub, submission_id=submission_id, now=now)
        await Store.insert_submission(
            db,
            {
                "id": submission_id, "received_at": now, "mail_from": mail_from, "client_address": "127.0.0.1",
                "message_id": f"<{submission_id}@commune.example>", "subject": subject, "size": len(data),
                "data_sha256": data_sha256, "record_digest": sub.digest,
            },
            [(recipient, "[]")],
        )
    (row,) = await store.delivery_states(submission_id)
    copy_sha256 = hashlib.sha256(data + recipient.encode()).hexdigest()
    record = delivery_record(
        submission_digest=sub.digest, recipient=recipient, copy_sha256=copy_sha256, dkim=[],
        ack_link_inserted=target_url is None, ack_link_reason=None, certified_at=iso_time(now),
    )
    token = secrets.token_urlsafe(16)
    async with store.transaction() as db:
        await Store.insert_record(db, record, delivery_id=row.id, now=now)
        await Store.set_delivery_copy(db, row.id, copy_sha256, record.digest, now)
        await Store.insert_ack_token(
            db, token_sha256=hashlib.sha256(token.encode("ascii")).hexdigest(), delivery_id=row.id,
            target_url=target_url, now=now,
        )
    return MadeDelivery(token=token, delivery_id=row.id, delivery_digest=record.digest)
