"""Reports coming back to the bounce domain: matched to their delivery, recorded as evidence.

The SMTP intake hands over mail to ``dsn.bounce_domain`` (from anyone: reporting MTAs are
not our clients) and nothing else: each address there is a copy's return path
(relay.outbound.verp). Replies, each explicit:

- RCPT: 250 for a return path we gave a copy; 550 5.1.1 for any other address there;
  452 4.5.3 for a second recipient (a report concerns one copy);
- DATA: 250 once the report, its record, the delivery's new state and, when the report says
  the member's server refused the copy, the sender's notice (as relay.outbound.deliver sends
  for a refusal by the outbound MTA) are committed;
  550 5.6.0 for what is not a report we can read (an auto-reply, a truncated report);
  550 5.7.1 for a report about another recipient or another envelope (forged, or not
  about the copy this return path was given to); 451 while the copy's own hand-off
  is not yet recorded, so the report never lands before the fact it follows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from relay.config import Config
from relay.evidence import records
from relay.outbound import verp
from relay.outbound.notice import Bounced, stage_notice
from relay.outbound.reports import RecipientStatus, Report, ReportError, parse_report
from relay.smtp.intake import REPLY_ONE_REPORT
from relay.smtp.spool import Spool
from relay.store import reports as report_store

log = logging.getLogger("estampille.reports")

REPLY_RECORDED = "250 2.0.0 Ok: report recorded"
REPLY_UNKNOWN = "550 5.1.1 No such return path"
REPLY_NOT_A_REPORT = "550 5.6.0 Not a delivery status report"
REPLY_NOT_OURS = "550 5.7.1 This report is not about the message sent with this return path"
REPLY_TOO_EARLY = "451 4.3.0 Report arrived before its message was recorded, please try again later"
# The delivery states in which the hand-off is recorded: a report then follows it.
_HANDED_OFF = ("delivered", "failed")


class ReportIntake:
    """The bounce domain's policy for the SMTP intake (a small hook there)."""

    def __init__(self, config: Config, spool: Spool) -> None:
        self.domain = config.dsn.bounce_domain
        self.hostname = config.smtp.hostname
        self.spool = spool
        self.store = spool.store

    def is_report_address(self, address: str) -> bool:
        return verp.in_bounce_domain(address, self.domain)

    async def check_recipient(self, address: str, recipients: list[str]) -> str:
        """The reply to ``RCPT TO:<address>`` at the bounce domain, ``recipients`` already taken."""
        if recipients:
            return REPLY_ONE_REPORT
        token = verp.token_of(address, self.domain)
        if token is None or await report_store.delivery_of(self.store, token) is None:
            log.warning("RCPT to unknown return path <%s> refused", address)
            return REPLY_UNKNOWN
        return "250 2.1.5 Ok"

    async def take(self, data: bytes, address: str, client_address: str, now: float) -> str:
        """Match the report sent to ``address`` to its delivery and record it; the DATA reply."""
        token = verp.token_of(address, self.domain)
        delivery = await report_store.delivery_of(self.store, token) if token else None
        if delivery is None:
            return REPLY_UNKNOWN
        try:
            report = await asyncio.to_thread(parse_report, data)  # about 1 ms: off the loop
        except ReportError as exc:
            log.warning("mail to <%s> from %s refused: %s", address, client_address, exc)
            return REPLY_NOT_A_REPORT
        status = _status_of(report, token or "", delivery)
        if status is None or delivery["record_digest"] is None:
            log.warning("report to <%s> from %s refused: not about the copy sent to <%s>",
                        address, client_address, delivery["recipient"])
            return REPLY_NOT_OURS
        if delivery["state"] not in _HANDED_OFF:
            return REPLY_TOO_EARLY
        sha256 = hashlib.sha256(data).hexdigest()
        record = records.report_record(
            delivery_digest=delivery["record_digest"], report_sha256=sha256, format=report.format,
            reporting_mta=report.reporting_mta, action=status.action, status=status.status,
            remote_mta=status.remote_mta, diagnostic=status.diagnostic, last_attempt=status.last_attempt,
            received_from=client_address, received_at=records.iso_time(now),
        )
        write = report_store.ReportWrite(
            delivery_id=delivery["id"], submission_id=delivery["submission_id"], received_at=now,
            action=status.action, status=status.status, remote_mta=status.remote_mta,
            diagnostic=status.diagnostic, reply_code=status.reply_code, data=data, sha256=sha256, record=record,
        )
        event = None
        if delivery["kind"] == "mail":
            event = {
                "submission_id": delivery["submission_id"], "message_id": delivery["message_id"],
                "recipient": delivery["recipient"], "delivery_id": delivery["id"], "code": status.reply_code,
                "reply": status.diagnostic, "record": record.digest, "remote_mta": status.remote_mta,
                "reported": True,
            }
        notice = await self._notice(delivery, status, now)

        async def queue_notice(db: Any) -> None:
            if notice is not None:
                await Spool.insert(db, *notice, now)

        await report_store.record_report(self.store, write, event, queue_notice)
        log.info("report for delivery %d of %s to <%s>: %s %s (%s)", delivery["id"], delivery["submission_id"],
                 delivery["recipient"], status.action, status.status, status.diagnostic)
        if notice is not None and self.spool.on_queued is not None:
            self.spool.on_queued()  # wakes delivery for the sender's notice
        return REPLY_RECORDED

    async def _notice(self, delivery: Any, status: RecipientStatus, now: float) -> tuple[Any, ...] | None:
        """The sender's notice when this report makes the delivery fail (once), as the relay's own
        DSN would have; the report came here, not to the sender."""
        if status.action != "failed" or delivery["state"] == "failed" or delivery["kind"] != "mail":
            return None
        if not delivery["mail_from"]:
            return None  # never to <>
        bounced = Bounced(
            mail_from=delivery["mail_from"], recipient=delivery["recipient"],
            orcpt=verp.orcpt_of(tuple(json.loads(delivery["rcpt_options"]))), data_sha256=delivery["data_sha256"],
            message_id=delivery["message_id"], received_at=delivery["received_at"],
        )
        diagnostic = status.diagnostic or status.status
        if status.remote_mta:
            diagnostic = f"{status.remote_mta} said: {diagnostic}"
        return await stage_notice(self.store, self.hostname, bounced, status=status.status, diagnostic=diagnostic,
                                  now=now)


def _status_of(report: Report, token: str, delivery: Any) -> RecipientStatus | None:
    """The report's status for this delivery's recipient, if the report is about its copy."""
    if report.envelope_id is not None and report.envelope_id.lower() != token:
        return None  # the report names another envelope than the one this return path went with
    return report.status_for(delivery["recipient"])
