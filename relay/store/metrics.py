"""The figures /metrics reads from the database at each scrape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from relay.store.engine import Database
from relay.store.states import BatchState, DeliveryState


@dataclass(frozen=True)
class OperationsFigures:
    """What /metrics reads from the database at each scrape (times are Unix times)."""

    deliveries_by_state: dict[str, int]
    attempts_by_outcome: dict[str, int]
    fetches_by_classification: dict[str, int]
    oldest_deferred_received_at: float | None
    leaves_pending: int
    oldest_leaf_queued_at: float | None
    batches_pending: int
    oldest_batch_created_at: float | None
    receipts: int


class MetricsSource(Protocol):
    """Where /metrics reads its figures."""

    async def operations_figures(self) -> OperationsFigures: ...


class SqliteMetrics:
    """:class:`MetricsSource` on SQLite."""

    db: Database

    async def operations_figures(self) -> OperationsFigures:
        """Counts and oldest times that the metrics endpoint exposes."""
        deferred = await self.db.fetchone(
            "SELECT MIN(s.received_at) FROM deliveries d JOIN submissions s ON s.id = d.submission_id"
            " WHERE d.state = ?",
            (DeliveryState.DEFERRED,),
        )
        leaves = await self.db.fetchone("SELECT COUNT(*), MIN(queued_at) FROM anchor_leaves WHERE batch_id IS NULL")
        batches = await self.db.fetchone(
            "SELECT COUNT(*), MIN(created_at) FROM anchor_batches WHERE state IN (?, ?, ?)",
            (BatchState.SUBMITTING, BatchState.PENDING, BatchState.ATTESTED),
        )
        receipts = await self.db.fetchone("SELECT COUNT(*) FROM receipts")
        assert deferred is not None and leaves is not None and batches is not None and receipts is not None
        return OperationsFigures(
            deliveries_by_state=await self._counts("SELECT state, COUNT(*) FROM deliveries GROUP BY state"),
            attempts_by_outcome=await self._counts("SELECT outcome, COUNT(*) FROM attempts GROUP BY outcome"),
            fetches_by_classification=await self._counts(
                "SELECT classification, COUNT(*) FROM fetches GROUP BY classification"
            ),
            oldest_deferred_received_at=deferred[0],
            leaves_pending=leaves[0],
            oldest_leaf_queued_at=leaves[1],
            batches_pending=batches[0],
            oldest_batch_created_at=batches[1],
            receipts=receipts[0],
        )

    async def _counts(self, sql: str) -> dict[str, int]:
        return {row[0]: row[1] for row in await self.db.fetchall(sql)}

