"""The relay end to end: real clients -> intake -> spool -> delivery -> a recording upstream."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import aiosmtplib
import pytest

from relay.outbound import upstream
from tests.conftest import require_tool
from tests.support.relay import relay_config, running
from tests.support.sink import LIMIT_REPLY, Sink, free_port
from tests.support.tlscert import self_signed

WAIT_SECONDS = 20.0


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


async def wait_states(service, *states: str, submission_kind: str = "mail") -> list:
    """The deliveries of the first submission once every one is in one of ``states`` (bounded wait)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        sub = await service.store.fetchone("SELECT id FROM submissions WHERE kind = ? ORDER BY id", (submission_kind,))
        rows = await service.store.delivery_states(sub["id"]) if sub else []
        if rows and all(row.state in states for row in rows):
            return rows
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.02)


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


async def test_swaks_message_is_delivered(tmp_path):
    swaks = require_tool("swaks")
    async with Sink() as sink:
        async with running(relay_config(tmp_path, sink.port)) as service:
            proc = await asyncio.create_subprocess_exec(
                swaks, "--server", f"127.0.0.1:{service.smtp_port}", "--from", "a@example.org",
                "--to", "b@example.net,c@example.net", "--header", "Subject: swaks test",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, out.decode()
            assert b"250 2.0.0 Ok: queued as" in out
            got = await sink.wait_for(2)
    assert sorted(m.rcpt_tos for m in got) == [("b@example.net",), ("c@example.net",)]


async def test_451_then_250_is_delivered_on_retry(tmp_path):
    async with Sink() as sink:
        sink.script("b@example.net", ["451 4.3.0 try again later"])
        async with running(relay_config(tmp_path, sink.port)) as service:
            await aiosmtplib.send(message(), sender="a@example.org", recipients=["b@example.net"],
                                  hostname="127.0.0.1", port=service.smtp_port)
            got = await sink.wait_for(1)
            states = await wait_states(service, "delivered")
    assert [a.reply[:3] for a in sink.attempts] == ["451", "250"]
    assert got[0].rcpt_tos == ("b@example.net",)
    assert states[0].attempts == 2


async def test_upstream_down_then_up_is_delivered(tmp_path):
    port = free_port()
    async with running(relay_config(tmp_path, port)) as service:
        await aiosmtplib.send(message(), sender="a@example.org", recipients=["b@example.net"],
                              hostname="127.0.0.1", port=service.smtp_port)
        deferred = await wait_states(service, "deferred")
        assert deferred[0].last_code is None and deferred[0].last_reply
        async with Sink(port=port) as sink:
            got = await sink.wait_for(1)
            await wait_states(service, "delivered")
    assert got[0].rcpt_tos == ("b@example.net",)


async def test_550_fails_and_sender_gets_a_multipart_report(tmp_path):
    async with Sink() as sink:
        sink.script("nobody@example.net", ["550 5.1.1 <nobody@example.net>: no such user"])
        async with running(relay_config(tmp_path, sink.port)) as service:
            await aiosmtplib.send(message(subject="Conseil du 3 mars", to="nobody@example.net"),
                                  sender="a@example.org", recipients=["nobody@example.net"],
                                  hostname="127.0.0.1", port=service.smtp_port)
            got = await sink.wait_for(1)
            states = await wait_states(service, "failed")
    assert states[0].last_code == 550
    dsn = got[0]
    assert dsn.mail_from == "" and dsn.rcpt_tos == ("a@example.org",)
    report = BytesParser(policy=policy.default).parsebytes(dsn.data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = parts[1].as_bytes().decode()
    assert "Final-Recipient: rfc822; nobody@example.net" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1" in status
    assert "Subject: Conseil du 3 mars" in parts[2].as_bytes().decode()


async def test_a_recipient_refused_at_rcpt_fails_and_the_connection_goes_on(tmp_path):
    async with Sink(refuse_rcpt={"nobody@example.net": "550 5.1.1 no such user here"}) as sink:
        config = relay_config(tmp_path, sink.port, upstream={"connections": 1, "concurrency": 1})
        async with running(config) as service:
            rcpts = ["b1@example.net", "nobody@example.net", "b2@example.net"]
            code, _ = await asyncio.to_thread(smtplib_send, service.smtp_port, "a@example.org", rcpts, message())
            assert code == 250
            states = await wait_states(service, "delivered", "failed")
            got = await sink.wait_for(3)  # two copies and the DSN for the refused one
    by_recipient = {row.recipient: (row.state, row.last_code) for row in states}
    assert by_recipient == {"b1@example.net": ("delivered", 250), "b2@example.net": ("delivered", 250),
                            "nobody@example.net": ("failed", 550)}
    assert sorted(m.rcpt_tos for m in got) == [("a@example.org",), ("b1@example.net",), ("b2@example.net",)]
    assert sink.connections == 1  # reset after the refusal, not closed


@pytest.mark.parametrize(("refuse_at", "slow_ehlo"), [("greeting", 0.0), ("MAIL", 0.0), ("DATA", 0.0), ("greeting", 0.5)])
async def test_an_upstream_allowing_fewer_connections_gets_no_more_and_nothing_waits_for_a_retry(
    tmp_path, caplog, refuse_at, slow_ehlo
):
    """The MTA allows 2 sessions at once, the relay is set for 8: the connections it refuses
    do not defer deliveries (retry_first would hold them for minutes); the pool keeps to 2.
    Some MTAs refuse at the greeting; Exchange Online greets a connection over its limit and
    answers its transaction 432 4.3.2 (at the end of DATA, as users' reports show; at MAIL too
    here), which the relay takes as a refused connection, and no copy is accepted twice.
    With ``slow_ehlo`` the second session answers EHLO late, so the others are refused while
    it is still being opened: the pool waits for it, and keeps to 2, not 1."""
    rcpts = [f"elu{n}@example.net" for n in range(12)]
    async with Sink(max_sessions=2, refuse_at=refuse_at, slow_ehlo=slow_ehlo) as sink:
        config = relay_config(tmp_path, sink.port, upstream={"connections": 8, "concurrency": 8},
                              delivery={"retry_first": 3600.0})
        async with running(config) as service:
            code, _ = await asyncio.to_thread(smtplib_send, service.smtp_port, "a@example.org", rcpts, message())
            assert code == 250
            await wait_states(service, "delivered", "deferred", "failed")
            attempts = await service.store.fetchall("SELECT outcome FROM attempts")
    assert [a["outcome"] for a in attempts] == ["delivered"] * len(rcpts)
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(rcpts)  # each accepted once
    assert sink.refused_sessions >= 1 and sink.most_sessions == 2
    assert "refused connection" in caplog.text and "keeping to 2" in caplog.text
    assert "keeping to 1 " not in caplog.text


async def test_a_connection_limit_reply_with_no_other_connection_open_defers_as_before(tmp_path, caplog):
    """With no other connection to wait for, a limit reply on a new connection is a temporary
    failure as before, and the connection is kept for the next delivery, whose 432 is one too."""
    rcpts = ["b1@example.net", "b2@example.net"]
    async with Sink() as sink:
        for rcpt in rcpts:
            sink.script(rcpt, [LIMIT_REPLY])
        async with running(relay_config(tmp_path, sink.port, upstream={"connections": 1})) as service:
            code, _ = await asyncio.to_thread(smtplib_send, service.smtp_port, "a@example.org", rcpts, message())
            assert code == 250
            rows = await wait_states(service, "deferred")
    assert [row.last_code for row in rows] == [432, 432]
    assert sink.connections == 1 and "keeping to" not in caplog.text


async def test_a_flaw_of_ours_while_connecting_defers_the_delivery(tmp_path, monkeypatch):
    """An unexpected exception opening the upstream connection is logged and retried like a
    failed connection: the delivery is deferred, never left 'sending' nor bounced."""
    async def broken(self):
        raise ValueError("a bug")

    monkeypatch.setattr(upstream.SMTPUpstream, "_connect", broken)
    async with Sink() as sink:
        async with running(relay_config(tmp_path, sink.port)) as service:
            code, _ = await asyncio.to_thread(smtplib_send, service.smtp_port, "a@example.org",
                                              ["b@example.net"], message())
            assert code == 250
            await wait_states(service, "deferred")
            attempt = await last_attempt(service)
    assert attempt["reply"] == "local error while connecting: ValueError" and attempt["code"] is None


async def test_no_dsn_for_a_null_sender(tmp_path):
    async with Sink() as sink:
        sink.reply = lambda envelope: "550 5.7.1 refused"
        async with running(relay_config(tmp_path, sink.port)) as service:
            code, _ = await asyncio.to_thread(smtplib_send, service.smtp_port, "", ["b@example.net"], message())
            assert code == 250
            await wait_states(service, "failed")
            submissions = await service.store.fetchall("SELECT kind FROM submissions")
    assert [row["kind"] for row in submissions] == ["mail"]
    assert sink.messages == []


async def test_expiry_fails_with_a_dsn(tmp_path):
    async with Sink() as sink:
        sink.reply = lambda envelope: "451 4.4.1 busy" if envelope.rcpt_tos == ["b@example.net"] else None
        config = relay_config(tmp_path, sink.port, delivery={"give_up_after": 0.5, "retry_first": 0.1})
        async with running(config) as service:
            await aiosmtplib.send(message(), sender="a@example.org", recipients=["b@example.net"],
                                  hostname="127.0.0.1", port=service.smtp_port)
            got = await sink.wait_for(1)
            await wait_states(service, "failed")
    assert got[0].rcpt_tos == ("a@example.org",)
    assert b"Status: 4.4.7" in got[0].data and b"delivery time expired" in got[0].data


async def test_every_step_leaves_an_evidence_record(tmp_path):
    async with Sink() as sink:
        async with running(relay_config(tmp_path, sink.port)) as service:
            await aiosmtplib.send(message(), sender="a@example.org", recipients=["b@example.net"],
                                  hostname="127.0.0.1", port=service.smtp_port)
            await sink.wait_for(1)
            (row,) = await wait_states(service, "delivered")
            delivery = await service.store.get_record(row.record_digest)
            handoff = await service.store.get_record(row.handoff_digest)
            copy = await service.store.get_blob(row.copy_sha256)
    assert delivery.fields["recipient"] == "b@example.net"
    assert handoff.fields["delivery"] == delivery.digest
    assert handoff.fields["code"] == 250 and handoff.fields["queue_id"] == "SINK1"
    assert copy == sink.messages[0].data


def server_context(tmp_path):
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def last_attempt(service) -> dict:
    row = await service.store.fetchone("SELECT outcome, code, reply, tls FROM attempts ORDER BY id DESC")
    return dict(row)


async def test_upstream_certificate_is_verified_by_default(tmp_path):
    async with Sink(tls=server_context(tmp_path)) as sink:
        config = relay_config(tmp_path, sink.port, upstream={"tls": "starttls"})
        async with running(config) as service:
            await aiosmtplib.send(message(), sender="a@example.org", recipients=["b@example.net"],
                                  hostname="127.0.0.1", port=service.smtp_port)
            (row,) = await wait_states(service, "deferred")
    assert "certificate" in row.last_reply.lower() and sink.messages == []


async def test_upstream_starttls_and_auth(tmp_path):
    async with Sink(tls=server_context(tmp_path), credentials={"relay": "s3cret"}) as sink:
        upstream = {"tls": "starttls", "verify_certificates": False, "username": "relay", "password": "s3cret"}
        async with running(relay_config(tmp_path, sink.port, upstream=upstream)) as service:
            await aiosmtplib.send(message(), sender="a@example.org", recipients=["b@example.net"],
                                  hostname="127.0.0.1", port=service.smtp_port)
            await sink.wait_for(1)
            await wait_states(service, "delivered")
            attempt = await last_attempt(service)
    assert attempt["tls"].startswith("TLSv1")


async def test_upstream_refusing_our_password_defers_and_never_bounces(tmp_path):
    async with Sink(tls=server_context(tmp_path), credentials={"relay": "s3cret"}) as sink:
        upstream = {"tls": "starttls", "verify_certificates": False, "username": "relay", "password": "wrong",
                    "timeout": 2.0}
        async with running(relay_config(tmp_path, sink.port, upstream=upstream)) as service:
            await aiosmtplib.send(message(), sender="a@example.org", recipients=["b@example.net"],
                                  hostname="127.0.0.1", port=service.smtp_port)
            (row,) = await wait_states(service, "deferred")
    assert row.last_code is None and row.last_reply and sink.attempts == []


async def test_utf8_addresses_and_8bit_body_go_through(tmp_path):
    data = ("From: élu@exemple.fr\r\nTo: maire@exemple.fr\r\nSubject: Séance\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "Ordre du jour: budget, école.\r\n")

    def session(port: int) -> int:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.has_extn("smtputf8") and client.has_extn("8bitmime")
            client.sendmail("élu@exemple.fr", ["maire@exemple.fr"], data.encode(),
                            mail_options=["SMTPUTF8", "BODY=8BITMIME"])
            return 250

    async with Sink() as sink:
        async with running(relay_config(tmp_path, sink.port)) as service:
            assert await asyncio.to_thread(session, service.smtp_port) == 250
            got = await sink.wait_for(1)
    assert got[0].mail_from == "élu@exemple.fr" and got[0].rcpt_tos == ("maire@exemple.fr",)
    delivered = BytesParser(policy=policy.default).parsebytes(got[0].data)
    assert "école" in delivered.get_body(("plain",)).get_content()
