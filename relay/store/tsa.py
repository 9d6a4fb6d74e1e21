"""RFC 3161 tokens of anchoring batches: one row per batch, waiting or stamped.

A row is written when the batch is stored, with the token if the TSA answered in time,
else 'waiting' with the time to ask again; a later round stamps it. Every failure is
persisted (attempts, next attempt, last error), never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.store import Store


@dataclass(frozen=True)
class Stamp:
    """What a stamping round obtained, to store."""

    authority: str
    qualified: bool
    trust_list: str
    tsr: bytes
    chain_pem: bytes
    token_time: float
    policy: str


@dataclass(frozen=True)
class StoredToken:
    """A batch's stamped token, as a bundle needs it."""

    batch_id: int
    root: bytes
    stamp: Stamp


async def _execute(store: Store, sql: str, params: tuple[Any, ...]) -> None:
    async def work(db: Any) -> None:
        await db.execute(sql, params)

    await store.write(work, urgent=False)


async def save_stamped(store: Store, batch_id: int, preimage: bytes, stamp: Stamp, *, attempts: int) -> None:
    """Store (or complete) the batch's row with its checked token."""
    await _execute(
        store,
        "INSERT INTO tsa_tokens (batch_id, state, preimage, attempts, next_attempt_at, last_error, authority,"
        " qualified, trust_list, tsr, chain_pem, token_time, policy) VALUES (?, 'stamped', ?, ?, NULL, NULL,"
        " ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(batch_id) DO UPDATE SET state = 'stamped', attempts = excluded.attempts,"
        " next_attempt_at = NULL, last_error = NULL, authority = excluded.authority, qualified = excluded.qualified,"
        " trust_list = excluded.trust_list, tsr = excluded.tsr, chain_pem = excluded.chain_pem,"
        " token_time = excluded.token_time, policy = excluded.policy",
        (batch_id, preimage, attempts, stamp.authority, int(stamp.qualified), stamp.trust_list, stamp.tsr,
         stamp.chain_pem, stamp.token_time, stamp.policy),
    )


async def save_waiting(
    store: Store, batch_id: int, preimage: bytes, *, attempts: int, next_attempt_at: float, error: str
) -> None:
    """Store (or update) the batch's row as waiting for a token, to ask again at ``next_attempt_at``."""
    await _execute(
        store,
        "INSERT INTO tsa_tokens (batch_id, state, preimage, attempts, next_attempt_at, last_error)"
        " VALUES (?, 'waiting', ?, ?, ?, ?) ON CONFLICT(batch_id) DO UPDATE SET attempts = excluded.attempts,"
        " next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error",
        (batch_id, preimage, attempts, next_attempt_at, error),
    )


async def waiting_tokens(store: Store) -> list[Any]:
    """Every batch still waiting for its token: (batch_id, attempts, next_attempt_at, last_error)."""
    return await store.fetchall(
        "SELECT batch_id, attempts, next_attempt_at, last_error FROM tsa_tokens WHERE state = 'waiting'"
        " ORDER BY batch_id"
    )


async def due_tokens(store: Store, now: float) -> list[Any]:
    """Rows (batch_id, preimage, attempts) of batches waiting for a token whose retry is due."""
    return await store.fetchall(
        "SELECT batch_id, preimage, attempts FROM tsa_tokens WHERE state = 'waiting' AND next_attempt_at <= ?"
        " ORDER BY next_attempt_at",
        (now,),
    )


async def token_of_batch(store: Store, batch_id: int) -> StoredToken | None:
    """The batch's stamped token, or None (no TSA configured then, or still waiting)."""
    row = await store.fetchone(
        "SELECT t.*, b.root FROM tsa_tokens t JOIN anchor_batches b ON b.id = t.batch_id"
        " WHERE t.batch_id = ? AND t.state = 'stamped'",
        (batch_id,),
    )
    if row is None:
        return None
    stamp = Stamp(row["authority"], bool(row["qualified"]), row["trust_list"], row["tsr"], row["chain_pem"],
                  row["token_time"], row["policy"])
    return StoredToken(row["batch_id"], row["root"], stamp)


async def token_summaries(store: Store, batch_ids: list[int]) -> dict[int, Any]:
    """Batch id -> its token row's state, authority, qualified and token time, for the batches that have one."""
    ids = sorted(set(batch_ids))
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = await store.fetchall(
        f"SELECT batch_id, state, authority, qualified, token_time FROM tsa_tokens WHERE batch_id IN ({marks})", ids
    )
    return {row["batch_id"]: row for row in rows}
