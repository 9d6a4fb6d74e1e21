"""Store queries of delivery status reports (relay.outbound.bounces): return tokens and reports.

A return token is drawn for a delivery and stored before its copy is sent (in the
transaction of its delivery record); a report received is stored, bytes, evidence record,
row and the delivery's new state, in one transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from relay.evidence.records import Record
from relay.store import Store

# A report moves its delivery to this state; a delay is recorded and leaves it as it is.
# 'relayed' is what an MTA reports when the next hop (the member's server) took the copy but
# offers no DSN itself (RFC 3461 5.2.2; Postfix says so with the server's 250): the copy
# reached the member's server, as with 'delivered' and 'expanded' (delivered to a list).
STATE_OF_ACTION = {"delivered": "delivered", "relayed": "delivered", "expanded": "delivered", "failed": "failed"}


@dataclass(frozen=True)
class ReportWrite:
    """One report received for a delivery, to be recorded."""

    delivery_id: int
    submission_id: str
    received_at: float
    action: str
    status: str
    remote_mta: str | None
    diagnostic: str | None
    reply_code: int | None
    data: bytes  # the report as received
    sha256: str
    record: Record


async def insert_token(db: Any, token: str, delivery_id: int, now: float) -> None:
    """Store ``delivery_id``'s return token, inside the caller's transaction."""
    await db.execute("INSERT INTO return_tokens (token, delivery_id, created_at) VALUES (?, ?, ?)",
                     (token, delivery_id, now))


async def token_for(store: Store, delivery_id: int) -> str | None:
    row = await store.fetchone("SELECT token FROM return_tokens WHERE delivery_id = ?", (delivery_id,))
    return None if row is None else row["token"]


async def add_token(store: Store, token: str, delivery_id: int, now: float) -> str:
    """The delivery's token: ``token``, stored now, unless it has one already (then that one)."""
    async def add(db: Any) -> None:
        await db.execute("INSERT OR IGNORE INTO return_tokens (token, delivery_id, created_at) VALUES (?, ?, ?)",
                         (token, delivery_id, now))

    await store.write(add)
    found = await token_for(store, delivery_id)
    assert found is not None
    return found


async def delivery_of(store: Store, token: str) -> Any | None:
    """The delivery whose copy was sent with ``token`` (with its submission's kind and Message-ID)."""
    return await store.fetchone(
        "SELECT d.id, d.submission_id, d.recipient, d.rcpt_options, d.state, d.record_digest, d.handoff_digest,"
        " s.kind, s.message_id, s.mail_from, s.data_sha256, s.received_at FROM return_tokens t JOIN deliveries d ON d.id = t.delivery_id"
        " JOIN submissions s ON s.id = d.submission_id WHERE t.token = ?",
        (token,),
    )


async def record_report(store: Store, report: ReportWrite, event: dict[str, Any] | None,
                        also: Callable[[Any], Awaitable[Any]] | None = None) -> None:
    """Store the report's bytes, record and row, move its delivery to its new state, queue the
    webhook ``event`` (a delivery's 'delivered' or 'failed') and run ``also(db)`` (the sender's
    notice of a failure), in one transaction."""
    state = STATE_OF_ACTION.get(report.action)

    async def write(db: Any) -> None:
        await Store.insert_bytes(db, report.sha256, report.data)
        await Store.insert_record(db, report.record, submission_id=report.submission_id,
                                  delivery_id=report.delivery_id, now=report.received_at)
        await db.execute(
            "INSERT INTO delivery_reports (delivery_id, received_at, action, status, remote_mta, diagnostic,"
            " report_sha256, record_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (report.delivery_id, report.received_at, report.action, report.status, report.remote_mta,
             report.diagnostic, report.sha256, report.record.digest),
        )
        if state is not None:
            await db.execute(
                "UPDATE deliveries SET state = ?, last_code = ?, last_reply = ?, updated_at = ? WHERE id = ?",
                (state, report.reply_code, report.diagnostic or report.status, report.received_at, report.delivery_id),
            )
        if event is not None and state is not None:
            await store.enqueue_event(db, state, event, report.received_at)
        if also is not None:
            await also(db)

    await store.write(write)


async def reports_of(store: Store, submission_id: str) -> list[Any]:
    """The reports received for a submission's deliveries, oldest first."""
    return await store.fetchall(
        "SELECT r.* FROM delivery_reports r JOIN deliveries d ON d.id = r.delivery_id"
        " WHERE d.submission_id = ? ORDER BY r.received_at, r.id",
        (submission_id,),
    )
