"""The relay end to end: real clients -> intake -> spool -> delivery -> a recording upstream."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

from tests.support.relay import running, relay_config
from tests.support.sink import Sink


def message(subject: str = "Convocation", to: str = "b@example.net", body: str = "Bonjour.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "mairie@example.org"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.org>"
    msg.set_content(body)
    return msg.as_bytes()


def smtplib_send(port: int, sender: str, recipients: list[str], data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail(sender)
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            assert code == 250, (code, text)
        return client.data(data)


async def test_three_recipients_give_three_envelopes(tmp_path):
    async with Sink() as sink:
        async with running(relay_config(tmp_path, sink.port)) as service:
            rcpts = ["b1@example.net", "b2@example.net", "b3@example.net"]
            code, text = await asyncio.to_thread(smtplib_send, service.smtp_port, "a@example.org", rcpts, message())
            assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
            got = await sink.wait_for(3)
    assert sorted(m.rcpt_tos for m in got) == [(r,) for r in rcpts]
    assert all(m.mail_from == "a@example.org" for m in got)
    assert all(b"Subject: Convocation" in m.data for m in got)
