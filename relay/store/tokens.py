"""Acknowledgment tokens as capabilities: which ones a proof bundle disclosed, and the
refusals of disclosed or expired ones.

The database knows a token only by its SHA-256 (``ack_tokens``); its bytes live in the
certified copies alone. A bundle carrying copies discloses their tokens: building it
stores a disclosure record (anchored like every record) and marks those tokens in the
same transaction, before the bundle's bytes leave.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.evidence.records import Record
from relay.store import Store

REFUSAL_REASONS = ("disclosed", "expired")


async def token_hashes(store: Store, delivery_ids: Sequence[int]) -> list[str]:
    """The SHA-256 of every token of these deliveries (an inserted link, rewritten links)."""
    if not delivery_ids:
        return []
    marks = ", ".join("?" for _ in delivery_ids)
    rows = await store.fetchall(
        f"SELECT token_sha256 FROM ack_tokens WHERE delivery_id IN ({marks}) ORDER BY token_sha256",
        list(delivery_ids),
    )
    return [row["token_sha256"] for row in rows]


async def record_disclosure(
    store: Store, record: Record, *, submission_id: str, token_sha256s: Sequence[str], now: float
) -> None:
    """Store the disclosure record (queued for anchoring) and mark its tokens, at once.

    A token already disclosed keeps the digest of its first disclosure."""
    async def work(db: Any) -> None:
        await Store.insert_record(db, record, submission_id=submission_id, now=now)
        await db.executemany(
            "UPDATE ack_tokens SET disclosed_by = ? WHERE token_sha256 = ? AND disclosed_by IS NULL",
            [(record.digest, h) for h in token_sha256s],
        )

    await store.write(work)


async def record_refusal(store: Store, *, delivery_id: int, at: float, method: str, reason: str) -> None:
    """Keep one refused use of a disclosed or expired token."""
    if reason not in REFUSAL_REASONS:
        raise ValueError(f"unknown refusal reason {reason!r}")

    async def work(db: Any) -> None:
        await db.execute(
            "INSERT INTO token_refusals (delivery_id, at, method, reason) VALUES (?, ?, ?, ?)",
            (delivery_id, at, method, reason),
        )

    await store.write(work, urgent=False)


async def message_tokens(store: Store, submission_id: str) -> dict[str, list[Any]]:
    """The disclosure records and the token refusals of one submission, oldest first."""
    return {
        "disclosures": await store.fetchall(
            "SELECT digest, body, created_at FROM records WHERE submission_id = ? AND type = 'disclosure'"
            " ORDER BY created_at, id",
            (submission_id,),
        ),
        "refusals": await store.fetchall(
            "SELECT x.delivery_id, x.at, x.method, x.reason FROM token_refusals x"
            " JOIN deliveries d ON d.id = x.delivery_id WHERE d.submission_id = ? ORDER BY x.at, x.id",
            (submission_id,),
        ),
    }
