"""The delivery queue as operators see it: `estampille queue` and `estampille queue retry`."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from relay.config import Config
from relay.store import Store
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
        when = "" if row.state == DeliveryState.FAILED else f" next {_time(row.next_attempt_at)}"
        reply = " ".join((row.last_reply or "").split())[:160]
        lines.append(
            f"{row.id:>6} {row.state:<8} {row.submission_id} <{row.mail_from}> -> <{row.recipient}>"
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


def _time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
