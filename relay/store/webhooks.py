"""Webhooks: events queued in the transaction of the change they report, then sent in order
per URL by relay.ops.webhooks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from relay.evidence.records import canonical_json, iso_time
from relay.store.engine import Database, Executor, columns

if TYPE_CHECKING:
    from relay.store.tracker import FetchWrite, ReceiptWrite

WEBHOOK_EVENTS = (
    "accepted", "delivered", "deferred", "failed", "fetched", "acknowledged", "anchored", "confirmed",
    "copy.unlinked", "convocation.late",
)


@dataclass(frozen=True)
class WebhookEvent:
    """One event to send to one URL (a row of webhook_events but its state)."""

    id: int
    url: str
    event: str
    payload: bytes
    created_at: float
    attempts: int
    next_attempt_at: float


class WebhookQueue(Protocol):
    """Durable outgoing events; enqueue_event runs in the caller's transaction."""

    webhook_urls: tuple[str, ...]

    async def enqueue_event(self, db: Executor, event: str, payload: dict[str, Any], now: float) -> None: ...
    async def due_webhook_events(self, now: float) -> list[WebhookEvent]: ...
    async def purge_webhook_events(self, before: float) -> int: ...
    async def finish_webhook_event(self, event_id: int, *, state: str, next_attempt_at: float,
                                   error: str | None) -> None: ...


class SqliteWebhooks:
    """:class:`WebhookQueue` on SQLite."""

    db: Database
    # Set by the service from webhooks.urls; enqueue_event queues one row per URL.
    webhook_urls: tuple[str, ...] = ()

    async def enqueue_event(self, db: Executor, event: str, payload: dict[str, Any], now: float) -> None:
        """Queue ``event`` for every configured webhook URL, inside the caller's transaction.

        Call it in the transaction that makes the change the event reports, so an
        event is sent if and only if the change was committed.
        """
        if event not in WEBHOOK_EVENTS:
            raise ValueError(f"unknown webhook event {event!r}")
        if not self.webhook_urls:
            return
        body = canonical_json(payload)
        await db.executemany(
            "INSERT INTO webhook_events (url, event, payload, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
            [(url, event, body, now, now) for url in self.webhook_urls],
        )

    async def _event_subjects(self, db: Executor, delivery_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """What every delivery event names: the message, the recipient, the delivery."""
        ids = sorted(set(delivery_ids))
        marks = ", ".join("?" for _ in ids)
        cursor = await db.execute(
            "SELECT d.id, d.recipient, d.submission_id, s.message_id FROM deliveries d"
            f" JOIN submissions s ON s.id = d.submission_id WHERE d.id IN ({marks})",
            ids,
        )
        return {
            row[0]: {"delivery_id": row[0], "recipient": row[1], "submission_id": row[2], "message_id": row[3]}
            for row in await cursor.fetchall()
        }

    async def _tracker_webhooks(
        self, db: Executor, fetches: Sequence[FetchWrite], receipts: Sequence[ReceiptWrite]
    ) -> None:
        """Events 'fetched' and 'acknowledged' for what write_tracker_events just recorded."""
        if not self.webhook_urls:
            return
        subjects = await self._event_subjects(db, [f.delivery_id for f in fetches] + [r.delivery_id for r in receipts])
        for f in fetches:
            payload = {**subjects[f.delivery_id], "at": iso_time(f.at), "method": f.method,
                       "classification": f.classification, "record": f.record.digest}
            await self.enqueue_event(db, "fetched", payload, f.at)
        for r in receipts:
            payload = {**subjects[r.delivery_id], "at": iso_time(r.at), "record": r.record.digest}
            await self.enqueue_event(db, "acknowledged", payload, r.at)

    async def due_webhook_events(self, now: float) -> list[WebhookEvent]:
        """For each URL, its oldest pending event when due: events to one URL go out in order."""
        rows = await self.db.fetchall(
            f"SELECT {columns(WebhookEvent, 'e.')} FROM webhook_events e JOIN"
            " (SELECT url, MIN(id) AS id FROM webhook_events WHERE state = 'pending' GROUP BY url) h ON h.id = e.id"
            " WHERE e.next_attempt_at <= ? ORDER BY e.id",
            (now,),
        )
        return [WebhookEvent(*row) for row in rows]

    async def purge_webhook_events(self, before: float) -> int:
        """Delete events sent or given up before ``before``; pending ones are kept whatever their age."""
        async with self.db.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM webhook_events WHERE state != 'pending' AND next_attempt_at < ?", (before,)
            )
            return cursor.rowcount

    async def finish_webhook_event(
        self, event_id: int, *, state: str, next_attempt_at: float, error: str | None
    ) -> None:
        """After one attempt: sent, retried at ``next_attempt_at``, or failed for good."""
        async with self.db.transaction() as db:
            await db.execute(
                "UPDATE webhook_events SET state = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                " WHERE id = ?",
                (state, next_attempt_at, error, event_id),
            )

