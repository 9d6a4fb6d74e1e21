"""The delivery queue as operators see it: `estampille queue`, `queue retry` and `queue release`."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from relay.config import Config
from relay.store import Store, held
from relay.store.states import DeliveryState


async def describe(config: Config) -> list[str]:
    """One line per deferred or failed delivery, with its last reply."""
    store = await Store.open(config.data_path)
    try:
        rows = await store.pending_deliveries()
    finally:
        await store.close()
    lines = []
    for row in rows:
        is_held = row.next_attempt_at >= held.HELD_UNTIL
        state = "held" if is_held else row.state
        when = "" if row.state == DeliveryState.FAILED or is_held else f" next {_time(row.next_attempt_at)}"
        reply = " ".join((row.last_reply or "").split())[:160]
        lines.append(
            f"{row.id:>6} {state:<8} {row.submission_id} <{row.mail_from}> -> <{row.recipient}>"
            f" attempts={row.attempts}{when} last: {row.last_code or '-'} {reply}"
        )
    return lines


async def retry(config: Config, ids: list[int] | None) -> int:
    """Make the given deliveries (or all, when ``ids`` is None) due now; returns how many."""
    store = await Store.open(config.data_path)
    try:
        return await store.retry_deliveries(ids, time.time())
    finally:
        await store.close()


async def release(config: Config, ids: list[int]) -> int:
    """Make the given held deliveries due now; returns how many were held."""
    store = await Store.open(config.data_path)
    try:
        return await held.release(store, ids, time.time())
    finally:
        await store.close()


def _time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
