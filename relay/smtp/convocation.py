"""Intake's check of convocation deadlines (docs/convocations.md): the law's edge at DATA.

Reads the meeting date and the deadline of each message (``relay.law``) when ``[law]`` names
an assembly or sender rules; a late one is refused with 550 under ``[law] refuse_late``, else
accepted, logged as a WARNING and reported by the ``convocation.late`` webhook event, in the
transaction that stores it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from relay.config import LawConfig
from relay.law import verdict
from relay.law.meeting import Convocation
from relay.smtp.spool import Incoming, Queued
from relay.store import Store
from relay.store.law import save_convocation

log = logging.getLogger("estampille.law")


class ConvocationCheck:
    """One per intake handler; inert when the configuration names no assembly and no sender rule."""

    def __init__(self, config: LawConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.enabled = bool(config.assembly or config.senders)

    async def read(self, incoming: Incoming, now: float) -> Convocation | None:
        if not self.enabled or incoming.kind != "mail":
            return None
        received = dt.datetime.fromtimestamp(now, dt.UTC)
        try:
            # Parsing a message with large attachments takes milliseconds: off the event loop.
            return await asyncio.to_thread(Convocation.of, incoming.data, incoming.mail_from, received, self.config)
        except Exception:  # reading the law must never cost the sender its message
            log.exception(
                "cannot read the meeting date of a message from <%s>; its deadline is not checked", incoming.mail_from
            )
            return None

    def refusal(self, convocation: Convocation | None, peer: str) -> str | None:
        """The 550 reply for a late convocation under refuse_late, else None."""
        if convocation is None or convocation.deadline is None or not convocation.late or not self.config.refuse_late:
            return None
        log.warning("late convocation from %s refused: %s", peer, verdict.summary(convocation))
        return verdict.refusal(convocation.deadline)

    def rows(self, convocation: Convocation | None, now: float) -> Callable[[Any, Queued], Awaitable[None]] | None:
        """What Spool.accept writes in the submission's transaction: the convocation row, the late event."""
        if convocation is None:
            return None

        async def write(db: Any, queued: Queued) -> None:  # db: the transaction's connection
            await save_convocation(db, queued.submission_id, convocation, now)
            if convocation.late:
                payload = verdict.event(
                    convocation,
                    submission_id=queued.submission_id,
                    message_id=queued.facts.message_id,
                    subject=queued.facts.subject,
                )
                await self.store.enqueue_event(db, "convocation.late", payload, now)

        return write

    def accepted(self, convocation: Convocation | None, queued: Queued) -> None:
        """Once committed: the WARNING line of a late convocation."""
        if convocation is not None and convocation.late:
            log.warning(
                "late convocation %s message_id=%s: %s",
                queued.submission_id,
                queued.facts.message_id,
                verdict.summary(convocation),
            )
