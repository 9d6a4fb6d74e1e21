"""Evidence records, and what the proofs of one message gather: its submission, deliveries,
attempts, fetches, receipts, and each record's anchoring (relay.proof.gather, the API)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relay.errors import NotFoundError
from relay.evidence.records import Record
from relay.store.engine import SQL_CHUNK, Database, Executor, columns
from relay.store.states import BatchState, DeliveryState

_INSERT_RECORD_SQL = (
    "INSERT OR IGNORE INTO records (digest, type, body, submission_id, delivery_id, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
# Parameters (queued_at, digest); a record already stored was queued with it.
_QUEUE_LEAF_SQL = (
    "INSERT OR IGNORE INTO anchor_leaves (record_id, digest, queued_at) SELECT id, digest, ? FROM records WHERE digest = ?"
)


@dataclass(frozen=True)
class Submission:
    """One message as received (a row of submissions; the field names are its columns)."""

    id: str
    kind: str
    received_at: float
    mail_from: str
    mail_options: str  # JSON list
    client_address: str
    auth_user: str | None
    tls: str | None
    message_id: str | None
    subject: str | None
    size: int
    data_sha256: str
    record_digest: str | None


@dataclass(frozen=True)
class Delivery:
    """One recipient of a submission (a row of deliveries)."""

    id: int
    submission_id: str
    recipient: str
    rcpt_options: str  # JSON list
    state: str  # a DeliveryState
    attempts: int
    next_attempt_at: float
    last_code: int | None
    last_reply: str | None
    copy_sha256: str | None
    record_digest: str | None
    handoff_digest: str | None
    updated_at: float


@dataclass(frozen=True)
class Attempt:
    """One attempt at a delivery (a row of attempts)."""

    id: int
    delivery_id: int
    started_at: float
    finished_at: float
    outcome: str
    code: int | None
    reply: str
    queue_id: str | None
    upstream_host: str | None
    tls: str | None


@dataclass(frozen=True)
class Fetch:
    """One fetch of an acknowledgment page (a row of fetches)."""

    id: int
    delivery_id: int
    at: float
    method: str
    classification: str
    reason: str
    personal_id: int | None
    record_digest: str | None


@dataclass(frozen=True)
class Receipt:
    """A delivery's acknowledgment of receipt (a row of receipts)."""

    delivery_id: int
    at: float
    personal_id: int | None
    record_digest: str


@dataclass(frozen=True)
class SubmissionEvidence:
    """The rows of one submission; ``handoffs`` are (delivery id, record digest), oldest first."""

    deliveries: tuple[Delivery, ...]
    attempts: tuple[Attempt, ...]
    fetches: tuple[Fetch, ...]
    receipts: tuple[Receipt, ...]
    handoffs: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class SubmissionSummary:
    """One search result: a message and its counts."""

    id: str
    message_id: str | None
    subject: str | None
    mail_from: str
    received_at: float
    recipients: int
    delivered: int
    acknowledged: int


@dataclass(frozen=True)
class EvidenceDigest:
    """One evidence record of a submission; ``batch_state`` is None while it waits for a batch."""

    submission_id: str
    digest: str
    batch_state: BatchState | None


@dataclass(frozen=True)
class RecordAnchoring:
    """A record, its anchoring leaf and its batch (the leaf and batch fields None when not batched)."""

    digest: str
    type: str
    body: bytes
    batch_id: int | None
    nonce: bytes | None
    batch_state: str | None  # a BatchState
    batch_timestamp: bytes | None
    bitcoin_height: int | None
    block_time: int | None
    root: bytes | None


class EvidenceStore(Protocol):
    """Records, and the evidence of one message; writers (static) run in the caller's transaction."""

    @staticmethod
    async def insert_record(db: Executor, record: Record, *, submission_id: str | None = None,
                            delivery_id: int | None = None, now: float) -> None: ...
    @staticmethod
    async def insert_records(db: Executor, records: Sequence[Record], *, now: float) -> None: ...
    async def get_record(self, digest: str) -> Record: ...
    async def search_submissions(self, *, query: str = "", since: float | None = None, until: float | None = None,
                                 limit: int, offset: int) -> tuple[list[SubmissionSummary], int]: ...
    async def message_digests(self, submission_ids: list[str]) -> list[EvidenceDigest]: ...
    async def message_evidence(self, submission_id: str) -> SubmissionEvidence: ...
    async def records_anchoring(self, digests: list[str]) -> dict[str, RecordAnchoring]: ...


class SqliteEvidence:
    """:class:`EvidenceStore` on SQLite."""

    db: Database

    @staticmethod
    async def insert_record(
        db: Executor,
        record: Record,
        *,
        submission_id: str | None = None,
        delivery_id: int | None = None,
        now: float,
    ) -> None:
        """Store a record and queue its digest for anchoring, inside the caller's transaction."""
        await db.execute(
            _INSERT_RECORD_SQL, (record.digest, record.type, record.body, submission_id, delivery_id, now)
        )
        await db.execute(_QUEUE_LEAF_SQL, (now, record.digest))

    @staticmethod
    async def insert_records(db: Executor, records: Sequence[Record], *, now: float) -> None:
        """:meth:`insert_record` for many records at once (no submission or delivery link)."""
        await db.executemany(_INSERT_RECORD_SQL, [(r.digest, r.type, r.body, None, None, now) for r in records])
        await db.executemany(_QUEUE_LEAF_SQL, [(now, r.digest) for r in records])

    async def get_record(self, digest: str) -> Record:
        row = await self.db.fetchone("SELECT body FROM records WHERE digest = ?", (digest,))
        if row is None:
            raise NotFoundError(f"no evidence record with digest {digest}")
        return Record.from_bytes(row["body"])

    async def search_submissions(
        self, *, query: str = "", since: float | None = None, until: float | None = None, limit: int, offset: int
    ) -> tuple[list[SubmissionSummary], int]:
        """Submissions matching ``query`` (Message-ID, subject, sender or a recipient), newest first.

        Returns one page of rows, each with its counts (recipients, delivered,
        acknowledged, records, anchored records), and the total number of matches.
        """
        where = ["s.kind = 'mail'"]
        params: list[Any] = []
        if query:
            like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(
                "(s.message_id LIKE ? ESCAPE '\\' OR s.subject LIKE ? ESCAPE '\\' OR s.mail_from LIKE ? ESCAPE '\\'"
                " OR EXISTS (SELECT 1 FROM deliveries q WHERE q.submission_id = s.id AND q.recipient LIKE ? ESCAPE '\\'))"
            )
            params += [like] * 4
        if since is not None:
            where.append("s.received_at >= ?")
            params.append(since)
        if until is not None:
            where.append("s.received_at < ?")
            params.append(until)
        clause = " AND ".join(where)
        counted = await self.db.fetchone(f"SELECT COUNT(*) FROM submissions s WHERE {clause}", params)
        assert counted is not None  # COUNT(*) always gives one row
        rows = await self.db.fetchall(
            "SELECT s.id, s.message_id, s.subject, s.mail_from, s.received_at,"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.submission_id = s.id) AS recipients,"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.submission_id = s.id"
            f"  AND d.state = '{DeliveryState.DELIVERED}') AS delivered,"
            " (SELECT COUNT(*) FROM receipts r JOIN deliveries d ON d.id = r.delivery_id"
            "  WHERE d.submission_id = s.id) AS acknowledged"
            f" FROM submissions s WHERE {clause} ORDER BY s.received_at DESC, s.id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [SubmissionSummary(*row) for row in rows], counted[0]

    async def message_digests(self, submission_ids: list[str]) -> list[EvidenceDigest]:
        """Every evidence digest of these submissions, with the state of its anchoring batch."""
        marks = ", ".join("?" for _ in submission_ids)
        rows = await self.db.fetchall(
            "SELECT m.submission_id, m.digest, b.state AS batch_state FROM ("
            f" SELECT id AS submission_id, record_digest AS digest FROM submissions WHERE id IN ({marks})"
            f" UNION ALL SELECT submission_id, record_digest FROM deliveries WHERE submission_id IN ({marks})"
            " UNION ALL SELECT d.submission_id, r.digest FROM records r JOIN deliveries d ON d.id = r.delivery_id"
            f"  WHERE r.type = 'handoff' AND d.submission_id IN ({marks})"
            " UNION ALL SELECT d.submission_id, r.record_digest FROM receipts r JOIN deliveries d"
            f"  ON d.id = r.delivery_id WHERE d.submission_id IN ({marks})"
            " UNION ALL SELECT d.submission_id, f.record_digest FROM fetches f JOIN deliveries d"
            f"  ON d.id = f.delivery_id WHERE d.submission_id IN ({marks})"
            " UNION ALL SELECT d.submission_id, p.record_digest FROM delivery_reports p JOIN deliveries d"
            f"  ON d.id = p.delivery_id WHERE d.submission_id IN ({marks})"
            ") m LEFT JOIN records r ON r.digest = m.digest LEFT JOIN anchor_leaves l ON l.record_id = r.id"
            " LEFT JOIN anchor_batches b ON b.id = l.batch_id"
            " WHERE m.digest IS NOT NULL",
            submission_ids * 6,
        )
        return [EvidenceDigest(row[0], row[1], None if row[2] is None else BatchState(row[2])) for row in rows]

    async def message_evidence(self, submission_id: str) -> SubmissionEvidence:
        """The rows of one submission: deliveries, attempts, fetches, receipts, hand-off records."""
        sid = (submission_id,)
        deliveries = await self.db.fetchall(
            f"SELECT {columns(Delivery)} FROM deliveries WHERE submission_id = ? ORDER BY id", sid
        )
        attempts = await self.db.fetchall(
            f"SELECT {columns(Attempt, 'a.')} FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
            " WHERE d.submission_id = ? ORDER BY a.id",
            sid,
        )
        fetches = await self.db.fetchall(
            f"SELECT {columns(Fetch, 'f.')} FROM fetches f JOIN deliveries d ON d.id = f.delivery_id"
            " WHERE d.submission_id = ? ORDER BY f.id",
            sid,
        )
        receipts = await self.db.fetchall(
            f"SELECT {columns(Receipt, 'r.')} FROM receipts r JOIN deliveries d ON d.id = r.delivery_id"
            " WHERE d.submission_id = ?",
            sid,
        )
        # Every answer of the upstream (one hand-off record per attempt it answered), oldest first.
        handoffs = await self.db.fetchall(
            "SELECT r.delivery_id, r.digest FROM records r JOIN deliveries d ON d.id = r.delivery_id"
            " WHERE d.submission_id = ? AND r.type = 'handoff' ORDER BY r.created_at, r.id",
            sid,
        )
        return SubmissionEvidence(
            deliveries=tuple(Delivery(*row) for row in deliveries),
            attempts=tuple(Attempt(*row) for row in attempts),
            fetches=tuple(Fetch(*row) for row in fetches),
            receipts=tuple(Receipt(*row) for row in receipts),
            handoffs=tuple((row[0], row[1]) for row in handoffs),
        )

    async def records_anchoring(self, digests: list[str]) -> dict[str, RecordAnchoring]:
        """Per digest: its record body and type, and its anchoring leaf and batch (None when not batched)."""
        out: dict[str, RecordAnchoring] = {}
        for start in range(0, len(digests), SQL_CHUNK):
            chunk = digests[start : start + SQL_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            rows = await self.db.fetchall(
                "SELECT r.digest, r.type, r.body, l.batch_id, l.nonce, b.state AS batch_state,"
                " b.timestamp AS batch_timestamp, b.bitcoin_height, b.block_time, b.root"
                " FROM records r LEFT JOIN anchor_leaves l ON l.record_id = r.id"
                " LEFT JOIN anchor_batches b ON b.id = l.batch_id"
                f" WHERE r.digest IN ({marks})",
                chunk,
            )
            out.update((row[0], RecordAnchoring(*row)) for row in rows)
        return out

