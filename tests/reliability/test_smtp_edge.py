"""The SMTP edge as an attacker meets it: parallel AUTH guesses get no more password checks
than the limit, control characters never reach the queue or the log, command lines are
short before DATA, and a message has at most smtp.max_recipients recipients."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket

import aiosmtplib
import pytest

from tests.reliability.test_abuse import OUTSIDE, PASSWORD, USER, WRONG, auth_plain, secured  # noqa: F401
from tests.support.relay import relay_config, running
from tests.support.sink import Sink
from tests.support.tlscert import client_context

PARALLEL = 50


async def test_parallel_auth_guesses_get_no_more_checks_than_the_limit(tmp_path, secured):  # noqa: F811
    """Before: 50 sessions sent AUTH at once and all 50 passwords were checked (limit 5)."""
    smtp, cert = secured
    config = relay_config(tmp_path / "data", smtp={**smtp, "auth_failures_per_minute": 5})
    async with running(config) as service:
        clients = []
        for _ in range(PARALLEL):  # every session ready to guess before any guess is sent
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, source_address=(OUTSIDE, 0),
                                     tls_context=client_context(cert), start_tls=True, timeout=30)
            await client.connect()
            await client.ehlo()
            clients.append(client)
        replies = await asyncio.gather(*(
            c.execute_command(b"AUTH", b"PLAIN", auth_plain(USER, f"{WRONG}-{n}").encode())
            for n, c in enumerate(clients)))
        for client in clients:
            client.close()
        right = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, tls_context=client_context(cert),
                                start_tls=True, timeout=30)
        await right.connect()  # another address, the right password: the limit is not a lock-out of all
        await right.ehlo()
        accepted = await right.execute_command(b"AUTH", b"PLAIN", auth_plain(USER, PASSWORD).encode())
        right.close()
    codes = sorted(r.code for r in replies)
    assert codes == [454] * (PARALLEL - 5) + [535] * 5, codes
    assert accepted.code == 235


def exchange(port: int, lines: list[bytes]) -> list[bytes]:
    """Send each line, read one reply to each (the first read is the greeting)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        reader = sock.makefile("rb")
        replies = [reader.readline()]
        for line in lines:
            sock.sendall(line)
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
            replies.append(reply)
        return replies


@pytest.mark.parametrize("mail,rcpt", [
    (b"<mai\x01rie@ville.example>", b"<elu@conseil.example>"),
    (b"<mairie@ville.example>", b"<el\x7fu@conseil.example>"),
    (b"<mairie@ville.example>", b"<elu\x1b@conseil.example>"),
    (b"<mairie@ville.example>", b"<\"el\ru\"@conseil.example>"),
])
async def test_control_characters_in_an_envelope_are_refused(tmp_path, mail, rcpt):
    """Before: queued, then deferred with a traceback at every retry for 5 days."""
    async with running(relay_config(tmp_path / "data")) as service:
        replies = await asyncio.to_thread(exchange, service.smtp_port, [
            b"EHLO client.test\r\n", b"MAIL FROM:" + mail + b"\r\n", b"RCPT TO:" + rcpt + b"\r\n",
            b"DATA\r\n", b"QUIT\r\n"])
        stored = await service.store.fetchone("SELECT COUNT(*) AS n FROM submissions")
    refused = [r[:3] for r in replies[2:4] if not r.startswith(b"250")]
    assert refused and refused[0] in (b"501", b"553"), replies
    assert not replies[4].startswith(b"354") and stored["n"] == 0, replies


async def test_an_auth_name_with_cr_lf_forges_no_log_line(tmp_path, secured, caplog):  # noqa: F811
    """Before: 'AUTH from ... refused for user mairie' then a line of the attacker's choosing."""
    smtp, _ = secured
    config = relay_config(tmp_path / "data", smtp={**smtp, "auth_plaintext_on_loopback": True})
    caplog.set_level(logging.INFO, logger="estampille.intake")
    forged = base64.b64encode(b"\0mairie\r\n2026-12-08 INFO estampille.intake: AUTH accepted\0x").decode()
    async with running(config) as service:
        replies = await asyncio.to_thread(exchange, service.smtp_port, [
            b"EHLO client.test\r\n", f"AUTH PLAIN {forged}\r\n".encode(), b"QUIT\r\n"])
    assert replies[2].startswith(b"501"), replies
    intake = [r.getMessage() for r in caplog.records if r.name == "estampille.intake"]
    assert any("AUTH from" in m for m in intake) and not [m for m in intake if "\n" in m or "\r" in m], intake


async def test_recipients_past_max_recipients_get_452(tmp_path):
    async with Sink() as sink:
        config = relay_config(tmp_path / "data", sink.port, smtp={"max_recipients": 3})
        async with running(config) as service:
            rcpts = [f"elu{n}@conseil.example".encode() for n in range(4)]
            replies = await asyncio.to_thread(exchange, service.smtp_port, [
                b"EHLO client.test\r\n", b"MAIL FROM:<mairie@ville.example>\r\n",
                *(b"RCPT TO:<" + r + b">\r\n" for r in rcpts), b"DATA\r\n", b"Subject: s\r\n\r\nx\r\n.\r\n"])
            copies = await sink.wait_for(3)
    assert [r[:3] for r in replies[3:7]] == [b"250", b"250", b"250", b"452"], replies
    assert replies[7].startswith(b"354") and replies[8].startswith(b"250")
    assert len(copies) == 3


async def test_a_login_logs_no_aiosmtpd_deprecation_warning(tmp_path, secured, caplog):  # noqa: F811
    """Before: 'WARNING mail.log: Session.login_data is deprecated' at every AUTH."""
    smtp, _ = secured
    config = relay_config(tmp_path / "data", smtp={**smtp, "auth_plaintext_on_loopback": True})
    caplog.set_level(logging.INFO)
    async with running(config) as service:
        replies = await asyncio.to_thread(exchange, service.smtp_port, [
            b"EHLO client.test\r\n", f"AUTH PLAIN {auth_plain(USER, PASSWORD)}\r\n".encode(), b"QUIT\r\n"])
    assert replies[2].startswith(b"235"), replies
    assert not [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
