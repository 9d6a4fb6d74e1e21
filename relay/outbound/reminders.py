"""Reminders of convocations ([reminders], docs/convocations.md): the I/O around relay.law.reminders.

A reminder goes to a member whose copy of a convocation was delivered and not acknowledged, when
relay.law.reminders says it is due, never within reminders.stop_before_hours of the meeting and
never after it. It is a message of its own, queued through the spool like a DSN (a message the
relay generates, delivered without a new link: the member's same link is in its text), and linked
to the member's convocation delivery in the ``reminders`` table, in the same transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import Callable

from relay.config import Config
from relay.errors import EstampilleError
from relay.law.deadline import paris_date
from relay.law.reminders import ReminderPolicy, ack_link, due, reminder_message, too_late
from relay.smtp.spool import Incoming, Spool
from relay.store import Store
from relay.store.law import Unacknowledged, save_reminder, unacknowledged

log = logging.getLogger("estampille.reminders")


class Reminders:
    """Sends due reminders every reminders.interval seconds (:meth:`run`), or at once (:meth:`send_now`)."""

    def __init__(self, config: Config, store: Store, spool: Spool, clock: Callable[[], float]) -> None:
        self.config = config
        self.store = store
        self.spool = spool
        self.clock = clock
        self.policy = ReminderPolicy.from_config(config.reminders)

    async def run(self) -> None:
        while True:
            try:
                await self.send_due()
            except EstampilleError as exc:  # the store is busy or failing: the next round tries again
                log.warning("reminders not sent this round: %s", exc)
            await asyncio.sleep(self.config.reminders.interval)

    async def send_due(self) -> int:
        """The scheduled reminders due now; how many were queued."""
        now = self._now()
        count = 0
        for member in await unacknowledged(self.store, paris_date(now)):
            c = member.stored.convocation
            if due(self.policy, received=c.received, meeting=c.meeting, acknowledged=False, sent=member.sent, now=now):
                count += await self._send(member, now)
        return count

    async def send_now(self, submission_id: str) -> int:
        """One reminder now to each member of one convocation who has not acknowledged it (the admin's
        button), unless the meeting is unknown, too close or past; how many were queued."""
        now = self._now()
        count = 0
        for member in await unacknowledged(self.store, paris_date(now), submission_id):
            meeting = member.stored.convocation.meeting
            if meeting is not None and not too_late(meeting, self.policy.stop_before, now):
                count += await self._send(member, now)
        return count

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    async def _send(self, member: Unacknowledged, now: dt.datetime) -> bool:
        copy = await self.store.get_blob(member.copy_sha256)
        link = ack_link(copy, self.config.tracker.public_url)
        if link is None:
            log.warning(
                "no reminder to %s: its copy of %s has no acknowledgment link",
                member.recipient,
                member.stored.submission_id,
            )
            return False
        c = member.stored.convocation
        data = reminder_message(
            copy,
            recipient=member.recipient,
            link=link,
            now=now,
            received=c.received,
            meeting=c.meeting,
            message_id=f"<reminder-{secrets.token_hex(12)}@{self.config.smtp.hostname}>",
        )
        incoming = Incoming(
            data=data,
            mail_from=member.stored.sender,
            recipients=(member.recipient,),
            client_address="local",
            kind="dsn",
        )
        number, stamp = member.sent + 1, now.timestamp()

        async def link_it(db, queued) -> None:  # type: ignore[no-untyped-def]  # Spool.accept's hook
            await save_reminder(db, member.delivery_id, queued.submission_id, number, stamp)

        try:
            queued = await self.spool.accept(incoming, stamp, also=link_it)
        except EstampilleError as exc:  # e.g. the same reminder queued at the same moment by the admin's button
            log.warning(
                "reminder %d to %s for %s not queued: %s", number, member.recipient, member.stored.submission_id, exc
            )
            return False
        log.info(
            "reminder %d to %s for %s queued as %s",
            number,
            member.recipient,
            member.stored.submission_id,
            queued.submission_id,
        )
        return True
