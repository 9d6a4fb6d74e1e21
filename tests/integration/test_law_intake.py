"""Convocation deadlines at intake, through the real SMTP intake: a late convocation is flagged
(WARNING line, convocation.late webhook, stored row) or refused at DATA under [law] refuse_late."""

from __future__ import annotations

import datetime as dt
import logging
import time
from email.message import EmailMessage

import aiosmtplib
import pytest

from relay.law.deadline import PARIS
from relay.store.law import convocation
from tests.integration.test_intake import count_rows
from tests.integration.test_webhooks import SECRET, Receiver
from tests.support.polling import until
from tests.support.relay import relay_config, running
from tests.support.sink import Sink

# The relay's clock reads Thursday 10 December 2026, 10:00 in Paris, whatever the real date.
NOW = dt.datetime(2026, 12, 10, 10, 0, tzinfo=PARIS).timestamp()
LATE = "Convocation au conseil municipal du mardi 15 décembre 2026"  # 5 jours francs: 9 December at the latest
ON_TIME = "Convocation au conseil municipal du vendredi 18 décembre 2026"  # 12 December at the latest
UNKNOWN = "Convocation au conseil municipal"


def message(subject: str, *headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "mairie@example.org"
    msg["To"] = "elus@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash(subject))}@example.org>"
    for header in headers:
        name, _, value = header.partition(": ")
        msg[name] = value
    msg.set_content("Ordre du jour joint.\n")
    return msg.as_bytes()


def shifted_clock():
    offset = NOW - time.time()
    return lambda: time.time() + offset


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def send(port: int, subject: str) -> aiosmtplib.SMTPResponse:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
        _, reply = await client.sendmail("mairie@example.org", ["b@example.net", "c@example.net"], message(subject))
        return reply


async def test_a_late_convocation_is_accepted_and_flagged(tmp_path, receiver, caplog):
    caplog.set_level(logging.WARNING, logger="estampille.law")
    async with Sink() as sink:
        config = relay_config(
            tmp_path,
            upstream_port=sink.port,
            law={"assembly": "commune"},
            webhooks={"urls": [receiver.url], "secret": SECRET},
        )
        async with running(config, clock=shifted_clock()) as service:
            for subject in (LATE, ON_TIME, UNKNOWN):
                await send(service.smtp_port, subject)
            await until(
                lambda: receiver.events if any(e["event"] == "convocation.late" for e in receiver.events) else None,
                "the late event",
            )
            await sink.wait_for(6)  # every copy is delivered all the same
            rows = {
                r["subject"]: await convocation(service.store, r["id"])
                for r in await service.store.fetchall("SELECT id, subject FROM submissions")
            }
    late, on_time, unknown = rows[LATE].convocation, rows[ON_TIME].convocation, rows[UNKNOWN].convocation
    assert late.late and late.deadline.latest == dt.date(2026, 12, 9)
    assert not on_time.late and on_time.deadline.latest == dt.date(2026, 12, 12)
    assert unknown.meeting is None and unknown.deadline is None and not unknown.late
    events = [e for e in receiver.events if e["event"] == "convocation.late"]
    assert len(events) == 1
    data = events[0]["data"]
    assert data["submission_id"] == rows[LATE].submission_id
    assert (data["meeting"], data["jours_francs"], data["latest_sending_date"]) == ("2026-12-15", 5, "2026-12-09")
    assert data["full_days_before_meeting"] == 4
    warnings = [r.getMessage() for r in caplog.records if r.name == "estampille.law" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and rows[LATE].submission_id in warnings[0] and "latest=2026-12-09" in warnings[0]


async def test_a_late_convocation_is_refused_at_data_when_configured(tmp_path):
    async with Sink() as sink:
        config = relay_config(tmp_path, upstream_port=sink.port, law={"assembly": "commune", "refuse_late": True})
        async with running(config, clock=shifted_clock()) as service:
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await send(service.smtp_port, LATE)
            assert refused.value.code == 550
            assert refused.value.message.startswith("5.7.0 Convocation late")
            assert "2026-12-09" in refused.value.message and "5 jours francs" in refused.value.message
            assert await count_rows(service.store, "submissions") == 0
            reply = await send(service.smtp_port, ON_TIME)  # the same session's next message is judged alone
            assert reply.startswith("2.0.0 Ok: queued")
            await sink.wait_for(2)
            assert await count_rows(service.store, "submissions") == 1
            assert await count_rows(service.store, "convocations") == 1


async def test_urgency_set_by_the_tool_shortens_the_deadline(tmp_path):
    async with Sink() as sink:
        config = relay_config(tmp_path, upstream_port=sink.port, law={"assembly": "commune", "refuse_late": True})
        async with running(config, clock=shifted_clock()) as service:
            data = message(LATE, "X-Meeting-Urgency: 1")
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port) as client:
                _, reply = await client.sendmail("mairie@example.org", ["b@example.net"], data)
            assert reply.startswith("2.0.0 Ok: queued")  # one jour franc: 13 December at the latest


async def test_without_law_configuration_nothing_is_read(tmp_path):
    async with Sink() as sink:
        config = relay_config(tmp_path, upstream_port=sink.port, law={"refuse_late": True})
        async with running(config, clock=shifted_clock()) as service:
            await send(service.smtp_port, LATE)
            await sink.wait_for(2)
            assert await count_rows(service.store, "convocations") == 0


async def test_a_message_the_law_cannot_read_is_accepted_all_the_same(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise IndexError("the email package's header parser fails on some inputs")

    monkeypatch.setattr("relay.smtp.convocation.Convocation.of", broken)
    async with Sink() as sink:
        config = relay_config(tmp_path, upstream_port=sink.port, law={"assembly": "commune", "refuse_late": True})
        async with running(config, clock=shifted_clock()) as service:
            reply = await send(service.smtp_port, LATE)
            assert reply.startswith("2.0.0 Ok: queued")
            await sink.wait_for(2)
            assert await count_rows(service.store, "convocations") == 0
    assert "its deadline is not checked" in caplog.text
