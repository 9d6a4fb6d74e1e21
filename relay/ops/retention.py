"""Retention: what is deleted, and when.

- Raw IP addresses and user agents (acknowledgments and page fetches) after
  ``privacy.retention_days``: the tracker's :meth:`Store.purge_personal`. The
  receipt records keep salted commitments, which stay verifiable and become
  opaque once the salt is gone.
- Message files (what was received and each copy sent) after
  ``retention.messages_days``, only when it is set: by default they are kept,
  being the proof of what was sent. A message still queued keeps its bytes.
- Evidence records, anchoring proofs and DKIM public keys: never.

``estampille purge`` runs it once; the service runs it every
``retention.purge_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from relay.config import Config
from relay.errors import StoreError
from relay.store import Store

log = logging.getLogger("estampille.retention")

DAY = 86400


@dataclass(frozen=True)
class PurgeSummary:
    """What one purge removed."""

    personal_rows: int
    messages: int  # message bodies deleted: files, and copies held in the database


async def purge(store: Store, config: Config, *, now: float) -> PurgeSummary:
    """Delete what has outlived its retention period; evidence records are never touched."""
    personal = await store.purge_personal(now - config.privacy.retention_days * DAY)
    deleted = 0
    if config.retention.messages_days > 0:
        deleted += await store.purge_messages(now - config.retention.messages_days * DAY, now)
    # Files marked purged are deleted after the commit; a run interrupted in between
    # leaves files that the next run finds and deletes.
    for digest in await store.purged_messages_present():
        deleted += await store.delete_blob(digest)
    summary = PurgeSummary(personal_rows=personal, messages=deleted)
    log.info("purge: %d personal data rows, %d messages deleted", personal, deleted)
    return summary


async def purge_periodically(store: Store, config: Config, clock: Callable[[], float]) -> None:
    """Purge now and then every ``retention.purge_interval`` seconds, until cancelled."""
    while True:
        try:
            await purge(store, config, now=clock())
        except StoreError as exc:
            log.error("purge failed, retrying in %d s: %s", config.retention.purge_interval, exc)
        await asyncio.sleep(config.retention.purge_interval)
