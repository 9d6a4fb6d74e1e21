"""The spool: makes a submission durable before anyone answers 250 for it.

Order of writes (the promise intake makes to the sender): ONE transaction
inserts the exact bytes (when they are at most INLINE_MAX octets), the
submission's evidence record, the submission row and a queued delivery per
recipient; its commit is the one fsync. Larger messages go first to the
content-addressed directory (fsync, rename, directory fsync). Intake (kind
'mail') and the DSN builder (kind 'dsn') both enqueue through here, so a DSN
travels the same delivery path.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from relay.certify.message import MessageFacts, read_facts
from relay.evidence import records
from relay.store import INLINE_MAX, Store
from relay.store.engine import AsyncConnection, Executor

SUBMISSION_RANDOM_BYTES = 6
SUBJECT_MAX_CHARS = 500  # the subject column is for listings; the record holds the digest of everything


@dataclass(frozen=True)
class Incoming:
    """A message and its envelope as received (or as generated, for a DSN)."""

    data: bytes
    mail_from: str
    recipients: tuple[str, ...]
    client_address: str
    rcpt_options: tuple[tuple[str, ...], ...] = ()  # one tuple per recipient, same order
    mail_options: tuple[str, ...] = ()
    auth_user: str | None = None
    tls: str | None = None
    kind: str = "mail"
    from_added: str | None = None  # the From every copy gets: the message had none with a domain


@dataclass(frozen=True)
class Queued:
    """What the spool answers once the submission is durable."""

    submission_id: str
    facts: MessageFacts
    data_sha256: str
    record_digest: str = field(repr=False)


def new_submission_id(now: float) -> str:
    """Sortable by time (hex milliseconds) and unguessable (random suffix)."""
    return f"{int(now * 1000):011x}{secrets.token_hex(SUBMISSION_RANDOM_BYTES)}"


class Spool:
    """Enqueues submissions in ``store``; ``on_queued`` is called after each commit (wakes delivery)."""

    def __init__(self, store: Store, on_queued: Callable[[], None] | None = None) -> None:
        self.store = store
        self.on_queued = on_queued

    async def accept(
        self,
        incoming: Incoming,
        now: float,
        also: Callable[[AsyncConnection, Queued], Awaitable[None]] | None = None,
    ) -> Queued:
        """Store the bytes and the rows (see the module docstring); return only once committed.
        ``also`` writes more rows about the submission in the same transaction (relay.smtp.convocation)."""
        facts, data_sha256 = await self.stage(self.store, incoming.data)

        async def rows(db: Executor) -> Queued:
            queued = await self.insert(db, incoming, facts, data_sha256, now)
            if incoming.kind == "mail":  # a DSN is the relay's own doing, not an event of the sender's
                payload = {
                    "submission_id": queued.submission_id, "message_id": facts.message_id, "subject": facts.subject,
                    "sender": incoming.mail_from, "recipients": list(incoming.recipients),
                    "record": queued.record_digest,
                }
                await self.store.enqueue_event(db, "accepted", payload, now)
            if also is not None:
                await also(db, queued)
            return queued

        queued = await self.store.write(rows)
        if self.on_queued is not None:
            self.on_queued()
        return queued

    @staticmethod
    async def stage(store: Store, data: bytes) -> tuple[MessageFacts, str]:
        """What intake reads of ``data`` and its SHA-256, before :meth:`insert`. Bytes over
        INLINE_MAX are stored now, as a file; insert stores smaller ones with their rows."""
        if len(data) <= INLINE_MAX:
            return await asyncio.to_thread(_facts_and_digest, data)
        data_sha256, facts = await asyncio.gather(store.put_blob(data), asyncio.to_thread(read_facts, data))
        return facts, data_sha256

    @staticmethod
    async def insert(
        db: Executor, incoming: Incoming, facts: MessageFacts, data_sha256: str, now: float
    ) -> Queued:
        """The rows of one submission, and its bytes when at most INLINE_MAX octets, inside the
        caller's transaction (larger bytes are already stored: Store.put_blob)."""
        if len(incoming.data) <= INLINE_MAX:
            await Store.insert_bytes(db, data_sha256, incoming.data)
        submission_id = new_submission_id(now)
        record = records.submission_record(
            data_sha256=data_sha256,
            mail_from=incoming.mail_from,
            rcpt_to=list(incoming.recipients),
            client_address=incoming.client_address,
            auth_user=incoming.auth_user,
            tls=incoming.tls,
            received_at=records.iso_time(now),
            message_id=facts.message_id,
            attachments=facts.attachment_dicts(),
            from_added=incoming.from_added,
        )
        await Store.insert_record(db, record, submission_id=submission_id, now=now)
        options = incoming.rcpt_options or tuple(() for _ in incoming.recipients)
        await Store.insert_submission(
            db,
            {
                "id": submission_id,
                "kind": incoming.kind,
                "received_at": now,
                "mail_from": incoming.mail_from,
                "mail_options": json.dumps(list(incoming.mail_options)),
                "client_address": incoming.client_address,
                "auth_user": incoming.auth_user,
                "tls": incoming.tls,
                "message_id": facts.message_id,
                "subject": facts.subject[:SUBJECT_MAX_CHARS] if facts.subject else None,
                "size": len(incoming.data),
                "data_sha256": data_sha256,
                "record_digest": record.digest,
            },
            [(rcpt, json.dumps(list(opts))) for rcpt, opts in zip(incoming.recipients, options, strict=True)],
        )
        return Queued(submission_id, facts, data_sha256, record.digest)


def _facts_and_digest(data: bytes) -> tuple[MessageFacts, str]:
    """What intake reads of a message, and its SHA-256 (in a worker thread: both scan it whole)."""
    return read_facts(data), records.sha256_hex(data)
