"""Signals on a real `estampille serve` process.

SIGTERM in the middle of a burst: exit 0, and after a restart every message that
got a 250 is delivered. SIGHUP: a new STARTTLS session sees the new certificate,
an open session keeps working, an unusable certificate is refused and the one in
use stays; renewed DKIM keys sign the copies certified after the reload; a changed
credentials file is read at the reload, not before.
systemd's notification socket gets READY=1 and STOPPING=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from relay.certify import dkim
from relay.smtp.auth import write_password
from tests.integration.test_relay import message, smtplib_send
from tests.support.polling import until
from tests.support.relay import relay_config, running
from tests.support.served import Relay, write_config
from tests.support.sink import Sink
from tests.support.tlscert import self_signed

CLIENTS = 4
ACCEPTED_BEFORE_SIGTERM = 24
WAIT_SECONDS = 30.0
SUBJECT = re.compile(rb"^Subject: (burst-\d+-\d+)\r?$", re.M)


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    with tempfile.TemporaryDirectory(prefix="notify-") as tmp:  # AF_UNIX paths must stay short
        path = os.path.join(tmp, "n")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            yield path, sock


async def notification(sock: socket.socket) -> list[str]:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), WAIT_SECONDS)
    return data.decode().splitlines()


def sender(port: int, number: int, accepted: list[str], stop: threading.Event) -> None:
    """Send messages on one connection until the relay closes it; note each 250."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_SECONDS) as client:
            for k in range(10_000):
                if stop.is_set():
                    return
                subject = f"burst-{number}-{k}"
                client.sendmail("mairie@example.org", [f"elu{number}@example.net"], message(subject=subject))
                accepted.append(subject)  # sendmail returned: the relay answered 250 to DATA
    except (smtplib.SMTPException, OSError):
        return  # 421, closed, or refused: whatever got no 250 stays the sender's


def delivered(sink: Sink) -> set[str]:
    return {m.group(1).decode() for r in sink.messages if (m := SUBJECT.search(r.data))}


async def test_sigterm_in_a_burst_exits_0_and_every_accepted_message_is_delivered(tmp_path: Path):
    async with Sink() as sink:
        config = write_config(tmp_path, sink.port)
        with notify_socket() as (path, sock):
            relay = await Relay.start(config, env={"NOTIFY_SOCKET": path})
            try:
                assert (await notification(sock))[0] == "READY=1"
                accepted: list[str] = []
                stop = threading.Event()
                threads = [
                    threading.Thread(target=sender, args=(relay.port.result(), n, accepted, stop))
                    for n in range(CLIENTS)
                ]
                for thread in threads:
                    thread.start()
                await until(lambda: len(accepted) >= ACCEPTED_BEFORE_SIGTERM, "the burst to get going")
                relay.proc.send_signal(signal.SIGTERM)  # clients are still sending
                assert await relay.wait() == 0, relay.log.decode(errors="replace")
                assert (await notification(sock))[0] == "STOPPING=1"
            finally:
                stop.set()
                relay.kill()
            for thread in threads:
                await asyncio.to_thread(thread.join, WAIT_SECONDS)
        assert b"stopped" in relay.log
        got_250 = set(accepted)
        assert len(got_250) >= ACCEPTED_BEFORE_SIGTERM

        restarted = await Relay.start(config)
        try:
            await until(lambda: got_250 <= delivered(sink), "every accepted message at the upstream")
        finally:
            restarted.proc.send_signal(signal.SIGTERM)
            code = await restarted.wait()
            restarted.kill()
        assert code == 0, restarted.log.decode(errors="replace")


def peer_certificate(port: int) -> bytes:
    """The certificate a new STARTTLS session is shown (DER)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test compares bytes; trust is not the point
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_SECONDS) as client:
        client.starttls(context=context)
        return client.sock.getpeercert(binary_form=True)


def der(cert_path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert_path.read_text())


async def test_sighup_reloads_the_certificate_and_keeps_open_sessions(tmp_path: Path):
    tls = tmp_path / "tls"
    tls.mkdir()
    cert, _ = self_signed(tls)
    first = der(cert)
    async with Sink() as sink:
        config = write_config(tmp_path, sink.port, smtp='tls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"')
        relay = await Relay.start(config)
        try:
            port = relay.port.result()
            assert await asyncio.to_thread(peer_certificate, port) == first
            held = smtplib.SMTP("127.0.0.1", port, timeout=WAIT_SECONDS)
            await asyncio.to_thread(held.ehlo, "client.test")

            self_signed(tls)  # a renewed certificate and key, same paths
            second = der(cert)
            assert second != first
            relay.proc.send_signal(signal.SIGHUP)
            await until(lambda: b"reloaded the TLS certificate" in relay.log, "the reload")
            assert await asyncio.to_thread(peer_certificate, port) == second
            # The session opened before the reload is still served.
            assert (await asyncio.to_thread(held.noop))[0] == 250
            await asyncio.to_thread(held.sendmail, "mairie@example.org", ["elu@example.net"],
                                    message(subject="after-reload"))
            await asyncio.to_thread(held.quit)
            await sink.wait_for(1)

            cert.write_text("not a certificate\n")  # a botched renewal
            relay.proc.send_signal(signal.SIGHUP)
            await until(lambda: b"reload refused" in relay.log, "the refusal")
            assert await asyncio.to_thread(peer_certificate, port) == second
        finally:
            relay.proc.send_signal(signal.SIGTERM)
            code = await relay.wait()
            relay.kill()
    assert code == 0, relay.log.decode(errors="replace")


async def signing_keys(service, count: int) -> list[set[str]]:
    """The DKIM public keys named by each delivery record, once there are ``count`` of them."""
    deadline = time.monotonic() + WAIT_SECONDS
    while len(rows := await service.store.fetchall(
            "SELECT body FROM records WHERE type = 'delivery' ORDER BY created_at")) < count:
        assert time.monotonic() < deadline, "timed out waiting for the delivery records"
        await asyncio.sleep(0.02)
    return [{key["public_key"] for key in json.loads(row["body"])["dkim"]} for row in rows]


def public_keys(entry) -> set[str]:
    return {dkim.SigningKey.from_file(entry.domain, selector, path).public_key
            for selector, path in ((entry.rsa_selector, entry.rsa_key), (entry.ed25519_selector, entry.ed25519_key))}


async def test_reload_signs_later_copies_with_renewed_dkim_keys(tmp_path: Path, caplog):
    old = dkim.generate_keys(tmp_path / "old", "mairie.example", "s1", "e1")
    old_keys = public_keys(old)
    async with Sink() as sink:
        config = relay_config(tmp_path / "data", sink.port, dkim={"domains": [old]})
        async with running(config) as service:
            send = lambda subject: asyncio.to_thread(  # noqa: E731
                smtplib_send, service.smtp_port, "convocations@mairie.example", ["elu@example.net"],
                message(subject=subject))
            await send("before")
            assert await signing_keys(service, 1) == [old_keys]

            new = dkim.generate_keys(tmp_path / "new", "mairie.example", "s1", "e1")
            for source, target in ((new.rsa_key, old.rsa_key), (new.ed25519_key, old.ed25519_key)):
                shutil.copyfile(source, target)  # renewed in place, as an operator would
            service.reload()
            await send("after")
            assert (await signing_keys(service, 2))[1] == public_keys(new) != old_keys

            Path(old.rsa_key).write_text("broken\n")
            with caplog.at_level(logging.ERROR, logger="estampille.service"):
                service.reload()
            assert "reload refused" in caplog.text
            await send("after a failed reload")
            assert (await signing_keys(service, 3))[2] == public_keys(new)
            await sink.wait_for(3)


def login(port: int, password: str) -> bool:
    """STARTTLS then AUTH as 'mairie'; True when the relay accepts the password."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT_SECONDS) as client:
        client.starttls(context=context)
        try:
            client.login("mairie", password)
        except smtplib.SMTPAuthenticationError:
            return False
        return True


async def test_reload_reads_a_changed_credentials_file(tmp_path: Path):
    cert, key = self_signed(tmp_path)
    credentials = tmp_path / "credentials"
    write_password(credentials, "mairie", "ancien mot de passe", os.urandom(16))
    config = relay_config(tmp_path / "data", smtp={
        "tls_cert": str(cert), "tls_key": str(key), "credentials_file": str(credentials),
        "auth_failures_per_minute": 100})
    async with running(config) as service:
        assert await asyncio.to_thread(login, service.smtp_port, "ancien mot de passe")
        write_password(credentials, "mairie", "nouveau mot de passe", os.urandom(16))
        assert await asyncio.to_thread(login, service.smtp_port, "ancien mot de passe")  # not reread yet
        service.reload()
        assert await asyncio.to_thread(login, service.smtp_port, "nouveau mot de passe")
        assert not await asyncio.to_thread(login, service.smtp_port, "ancien mot de passe")


async def test_a_port_already_taken_is_one_line_and_exit_4(tmp_path: Path):
    """What an operator sees when another MTA holds the port: no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, 25).read_text().replace("listen_port = 0", f"listen_port = {port}", 1)
        (tmp_path / "estampille.toml").write_text(config)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "serve", "--config", str(tmp_path / "estampille.toml"),
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), WAIT_SECONDS)
    assert proc.returncode == 4
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith(f"estampille: SMTP intake cannot listen on 127.0.0.1:{port}:")
    assert "Traceback" not in err.decode()
