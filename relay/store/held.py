"""Poison messages: a delivery in flight at three crashes of the relay in a row is held.

A message that crashes the relay while it is certified or sent would otherwise be retried at
every restart, forever. 'sending' alone does not say a delivery was in flight: the deliverer
claims a batch ahead of its workers. So at a start, a delivery left 'sending' becomes a suspect
(one crash); while it is one, the deliverer marks it ``started`` when a worker takes it up and
forgets it when done. At each later start, a suspect left 'sending' and started counts one crash
more; one that was not in flight starts again from one (the crashes must follow each other). At
:data:`CRASHES_TO_HOLD` the delivery is held: 'deferred' to :data:`HELD_UNTIL`, a time no claim
reaches, until ``estampille queue release ID`` makes it due again. Relay crashes that have
nothing to do with a message (an operator's SIGKILL, the OOM killer) thus hold nothing unless
the same delivery was in a worker's hands at three of them in a row.

The state column keeps 'deferred' because its CHECK lists the states and SQLite cannot widen
it without rebuilding the table, which the store's own change (delivery states as StrEnums)
does; the hold is told by :data:`HELD_UNTIL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.store import Store

CRASHES_TO_HOLD = 3
HELD_UNTIL = 2.0**53  # seconds since 1970: no clock reaches it, and a float holds it exactly
HELD_REPLY = f"held after {CRASHES_TO_HOLD} crashes of the relay in a row while in flight"

@dataclass(frozen=True)
class HeldDelivery:
    """A delivery just held: what the log line names."""

    delivery_id: int
    submission_id: str
    recipient: str


async def hold_poison(store: Store, now: float) -> list[HeldDelivery]:
    """Count a crash for each delivery left 'sending', hold those at CRASHES_TO_HOLD; call it at
    start, before :meth:`Store.requeue_interrupted`."""

    async def work(db: Any) -> list[HeldDelivery]:
        await db.execute("DELETE FROM delivery_crashes WHERE delivery_id NOT IN"
                         " (SELECT id FROM deliveries WHERE state = 'sending')")
        await db.execute("INSERT INTO delivery_crashes (delivery_id, crashes)"
                         " SELECT id, 1 FROM deliveries WHERE state = 'sending'"
                         " ON CONFLICT (delivery_id) DO UPDATE SET crashes = CASE WHEN started THEN crashes + 1 ELSE 1 END,"
                         " started = 0")
        cursor = await db.execute(
            "SELECT d.id, d.submission_id, d.recipient FROM delivery_crashes c JOIN deliveries d ON d.id = c.delivery_id"
            " WHERE c.crashes >= ? ORDER BY d.id", (CRASHES_TO_HOLD,))
        held = [HeldDelivery(row[0], row[1], row[2]) for row in await cursor.fetchall()]
        ids = [(h.delivery_id,) for h in held]
        await db.executemany("DELETE FROM delivery_crashes WHERE delivery_id = ?", ids)  # counts anew once released
        await db.executemany(
            "UPDATE deliveries SET state = 'deferred', next_attempt_at = ?, last_code = NULL, last_reply = ?,"
            " updated_at = ? WHERE id = ?", [(HELD_UNTIL, HELD_REPLY, now, i) for (i,) in ids])
        return held

    return await store.write(work, reads=True)


async def suspects(store: Store) -> set[int]:
    """The deliveries left 'sending' at a crash, whose next run is watched (mark_started)."""
    return {int(row[0]) for row in await store.fetchall("SELECT delivery_id FROM delivery_crashes")}


async def mark_started(store: Store, delivery_id: int) -> None:
    """A worker takes up a suspect: committed before its copy is certified or sent."""

    async def work(db: Any) -> None:
        await db.execute("UPDATE delivery_crashes SET started = 1 WHERE delivery_id = ?", (delivery_id,))

    await store.write(work)


async def forget(store: Store, delivery_id: int) -> None:
    """A suspect's run ended without crashing the relay: it is no suspect any more."""

    async def work(db: Any) -> None:
        await db.execute("DELETE FROM delivery_crashes WHERE delivery_id = ?", (delivery_id,))

    await store.write(work, urgent=False)


async def release(store: Store, ids: list[int], now: float) -> int:
    """Make the given held deliveries due now; returns how many were held."""

    async def work(db: Any) -> int:
        cursor = await db.executemany(
            "UPDATE deliveries SET state = 'queued', next_attempt_at = ?, updated_at = ?"
            " WHERE id = ? AND state = 'deferred' AND next_attempt_at >= ?",
            [(now, now, i, HELD_UNTIL) for i in ids])
        return int(cursor.rowcount)

    return await store.write(work, reads=True)


async def held_count(store: Store) -> int:
    row = await store.fetchone(
        "SELECT COUNT(*) FROM deliveries WHERE state = 'deferred' AND next_attempt_at >= ?", (HELD_UNTIL,))
    return int(row[0]) if row else 0
