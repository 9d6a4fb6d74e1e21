"""Abuse: the relay is no open relay, SMTP smuggling never splits a message, failed AUTH is
rate-limited per address, and a full run logged at DEBUG never shows a secret or a body."""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import secrets
import signal
import smtplib
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest

from relay.outbound.dsn import Failure, build_dsn
from relay.ratelimit import MAX_TRACKED_CLIENTS, RateLimiter
from relay.smtp.auth import write_password
from relay.store import BLOB_DIR
from tests.support.polling import until
from tests.support.relay import relay_config, running
from tests.support.served import Relay, write_config
from tests.support.sink import Sink, free_port
from tests.support.tlscert import client_context, self_signed
from tracker.admin_auth import new_token

USER, PASSWORD = "mairie", "Corr3ct-Horse-" + secrets.token_hex(4)
WRONG = "Wr0ng-Battery-" + secrets.token_hex(4)
OUTSIDE = "127.0.0.2"  # a loopback address outside the allowlist (127.0.0.1/32 only)
WAIT_SECONDS = 20.0


@pytest.fixture
def secured(tmp_path):
    """TLS certificate and key, and a credentials file with USER:PASSWORD."""
    cert, key = self_signed(tmp_path)
    credentials = tmp_path / "credentials"
    write_password(credentials, USER, PASSWORD, secrets.token_bytes(16))
    return {"tls_cert": str(cert), "tls_key": str(key), "credentials_file": str(credentials)}, cert


def auth_plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# -- open relay ---------------------------------------------------------------


def attempt(port: int, cert: Path, source: str, auth: str, tls: bool, rcpt: str) -> tuple[int, int]:
    """One relaying attempt as an attacker makes it: (AUTH reply or 0, final reply of RCPT or DATA)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo("attacker.test")
        if tls:
            client.starttls(context=client_context(cert))
            client.ehlo("attacker.test")
        auth_code = 0
        if auth != "none":  # sent even when AUTH is not offered: the server must refuse it
            auth_code, _ = client.docmd("AUTH", "PLAIN " + auth_plain(USER, PASSWORD if auth == "right" else WRONG))
        code, _ = client.mail("mairie@ville.example")
        if code != 250:
            return auth_code, code
        code, _ = client.rcpt(rcpt)
        if code != 250:
            return auth_code, code
        code, _ = client.data(f"Subject: essai {rcpt}\r\n\r\nBonjour.\r\n".encode())
        return auth_code, code


async def test_open_relay_matrix_only_allowlisted_or_authenticated_over_tls_relays(tmp_path, secured):
    smtp, cert = secured
    combos = list(itertools.product(["127.0.0.1", OUTSIDE], ["none", "wrong", "right"], [False, True]))
    async with Sink() as sink:
        config = relay_config(tmp_path / "data", sink.port, smtp={**smtp, "allowed_networks": ["127.0.0.1/32"]})
        async with running(config) as service:
            results = {}
            for n, (source, auth, tls) in enumerate(combos):
                rcpt = f"r{n}@conseil.example"
                results[(source, auth, tls)] = await asyncio.to_thread(
                    attempt, service.smtp_port, cert, source, auth, tls, rcpt)
            allowed = {c for c in combos if c[0] == "127.0.0.1" or (c[1] == "right" and c[2])}
            await sink.wait_for(len(allowed))
            await until(lambda: _settled(service.store, len(allowed)), "the deliveries")
            submissions = await service.store.fetchall("SELECT client_address, auth_user, tls FROM submissions")
            copies = await service.store.fetchone("SELECT COUNT(*) AS n FROM message_bytes")
        blobs = [p for p in (tmp_path / "data" / BLOB_DIR).rglob("*") if p.is_file()]
    for combo, (auth_code, code) in results.items():
        source, auth, tls = combo
        if auth != "none":  # AUTH: refused without TLS (538), 535 when wrong, 235 when right
            assert auth_code == (538 if not tls else 235 if auth == "right" else 535), (combo, auth_code)
        assert (code == 250) == (combo in allowed), (combo, code)
        if combo not in allowed:
            assert code == 550, (combo, code)  # 5.7.1 at RCPT
    assert len(submissions) == len(allowed) == 7
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == sorted(
        f"r{n}@conseil.example" for n, c in enumerate(combos) if c in allowed)
    outside = [s for s in submissions if s["client_address"] == OUTSIDE]
    assert len(outside) == 1 and outside[0]["auth_user"] == USER and outside[0]["tls"]
    # each accepted message and its one copy (both small: in the database), nothing else
    assert blobs == [] and copies["n"] == 2 * len(allowed)


BOUNCES = "bounces.ville.example"


def report_for(recipient: str) -> bytes:
    """A delivery status report (our own DSN format, RFC 3464) saying ``recipient`` refused the copy."""
    when = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    return build_dsn(
        reporting_mta="mx.fournisseur.example", sender="x@ville.example",
        failures=[Failure(recipient, "5.1.1", "550 5.1.1 no such user", f"rfc822;{recipient}")],
        original_headers=b"Subject: essai\n", original_message_id=None, arrival=when, now=when,
        boundary="B", message_id="<r@fournisseur.example>",
    )


def send_to_bounce_domain(port: int, source: str, rcpts: list[str], data: bytes) -> list[int]:
    """The replies to each RCPT, then to DATA if one was accepted, from the null sender."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo("mx.fournisseur.example")
        client.mail("")
        codes = [client.rcpt(rcpt)[0] for rcpt in rcpts]
        if 250 in codes:
            codes.append(client.data(data)[0])
        return codes


async def test_open_relay_matrix_the_bounce_domain_takes_reports_from_anyone_and_relays_nothing(tmp_path):
    async with Sink() as sink:
        config = relay_config(tmp_path / "data", sink.port, smtp={"allowed_networks": ["127.0.0.1/32"]},
                              dsn={"bounce_domain": BOUNCES})
        async with running(config) as service:
            await aiosmtplib.send(b"Subject: essai\r\n\r\nBonjour.\r\n", sender="mairie@ville.example",
                                  recipients=["elu@conseil.example"], hostname="127.0.0.1", port=service.smtp_port)
            (copy,) = await sink.wait_for(1)
            await until(lambda: _settled(service.store, 1), "the hand-off")  # reports follow it
            path = copy.mail_from  # the copy's own return path: bounces+<token>@BOUNCES
            assert path.startswith("bounces+") and path.endswith("@" + BOUNCES)
            local = path.partition("@")[0]
            results = {}
            for source in ("127.0.0.1", OUTSIDE):
                tries = {
                    "report": ([path], report_for("elu@conseil.example")),
                    "report, then another domain": ([path, "r@conseil.example"], report_for("elu@conseil.example")),
                    "another domain, then the report": (["r@conseil.example", path], report_for("elu@conseil.example")),
                    "unknown return path": ([f"bounces+{'0' * 32}@{BOUNCES}", f"postmaster@{BOUNCES}"], b""),
                    "not a report": ([path], b"Subject: hello\r\n\r\nPlease forward this.\r\n"),
                    "report about someone else": ([path], report_for("autre@conseil.example")),
                    "percent hack": ([f"{local}%conseil.example@{BOUNCES}"], b""),
                    "the token at another domain": ([f"{local}@conseil.example"], b""),
                    "source route": ([f"<@{BOUNCES}:r@conseil.example>"], b""),
                }
                for what, (rcpts, data) in tries.items():
                    results[(source, what)] = await asyncio.to_thread(
                        send_to_bounce_domain, service.smtp_port, source, rcpts, data)
            submissions = await service.store.fetchall("SELECT client_address, kind FROM submissions")
            reports = await service.store.fetchall("SELECT action FROM delivery_reports")
    inside = "127.0.0.1"
    for source in (inside, OUTSIDE):
        assert results[(source, "report")] == [250, 250]
        assert results[(source, "report, then another domain")] == [250, 452, 250]  # one report a transaction
        assert results[(source, "unknown return path")] == [550, 550]
        assert results[(source, "not a report")] == [250, 550]
        assert results[(source, "report about someone else")] == [250, 550]
        assert results[(source, "percent hack")] == [550]
    # From outside, only the report gets in; the allowlisted client's own mail is mail, as before.
    assert results[(OUTSIDE, "another domain, then the report")] == [550, 250, 250]
    assert results[(inside, "another domain, then the report")] == [250, 452, 250]
    assert results[(OUTSIDE, "the token at another domain")] == [550]
    assert results[(OUTSIDE, "source route")] == [550]
    assert [r["action"] for r in reports] == ["failed"] * 5  # inside 2, outside 3
    # The allowlisted client's token and source-route messages are mail like any other (the bounce
    # domain changes nothing for it), refused at DATA only because they are empty: no From, and the
    # null sender has no domain to repair it with (a copy DKIM must reject is never signed).
    assert results[(inside, "the token at another domain")] == [250, 550]
    assert results[(inside, "source route")] == [250, 550]
    # Nothing from outside became mail to relay: the first message, then the allowlisted client's
    # mixed one.
    assert [s["client_address"] for s in submissions if s["kind"] == "mail"] == [inside] * 2
    assert [s["client_address"] for s in submissions if s["kind"] == "dsn"] == ["local"]  # the sender told, once


async def _settled(store, expected: int) -> bool:
    row = await store.fetchone("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'delivered'")
    return row["n"] == expected


async def test_failed_auth_is_rate_limited_per_address_even_for_the_right_password(tmp_path, secured):
    smtp, cert = secured
    config = relay_config(tmp_path / "data", smtp={**smtp, "auth_failures_per_minute": 3})

    def tries(port: int, source: str, passwords: list[str]) -> list[int]:
        codes = []
        for password in passwords:  # a new connection each time: the limit is per address, not per session
            with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
                client.starttls(context=client_context(cert))
                client.ehlo("guesser.test")
                codes.append(client.docmd("AUTH", "PLAIN " + auth_plain(USER, password))[0])
        return codes

    async with running(config) as service:
        port = service.smtp_port
        guessed = await asyncio.to_thread(tries, port, OUTSIDE, [f"guess-{i}" for i in range(5)] + [PASSWORD])
        other = await asyncio.to_thread(tries, port, "127.0.0.1", [PASSWORD])
    assert guessed == [535, 535, 535, 454, 454, 454]
    assert other == [235]


# -- SMTP smuggling -------------------------------------------------------------

SMUGGLED = (b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@target.example>\r\nDATA\r\n"
            b"From: ceo@ville.example\r\nSubject: smuggled\r\n\r\nPay now.\r\n")
ENDINGS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\r", b"\r\n.\n", b"\n.\r", b"\r.\r\n"]


def smuggle(port: int, ending: bytes) -> bytes:
    data = b"From: mairie@ville.example\r\nSubject: ordre du jour\r\n\r\nBonjour." + ending + SMUGGLED
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"EHLO client.test\r\nMAIL FROM:<mairie@ville.example>\r\nRCPT TO:<elu@conseil.example>\r\n"
                     b"DATA\r\n")
        time_to_read = time.monotonic() + 10
        received = b""
        while b"354" not in received and time.monotonic() < time_to_read:
            received += sock.recv(4096)
        sock.sendall(data + b"\r\n.\r\nQUIT\r\n")
        while not received.endswith(b"221 Bye\r\n") and time.monotonic() < time_to_read:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received


async def test_smuggling_payloads_never_split_a_message(tmp_path):
    async with Sink() as sink:
        async with running(relay_config(tmp_path, sink.port)) as service:
            replies = [await asyncio.to_thread(smuggle, service.smtp_port, ending) for ending in ENDINGS]
            await sink.wait_for(len(ENDINGS))
            await until(lambda: _settled(service.store, len(ENDINGS)), "the deliveries")
            submissions = await service.store.fetchall("SELECT mail_from FROM submissions")
    for ending, received in zip(ENDINGS, replies, strict=True):
        assert received.count(b"250 2.0.0 Ok: queued") == 1, (ending, received)
        # Reply codes, not substrings: a random queue id may contain "500".
        codes = [line[:3] for line in received.split(b"\r\n") if line]
        assert b"554" not in codes and b"500" not in codes, (ending, received)
    assert [s["mail_from"] for s in submissions] == ["mairie@ville.example"] * len(ENDINGS)
    assert len(sink.attempts) == len(ENDINGS)
    assert all(m.rcpt_tos == ("elu@conseil.example",) and m.mail_from == "mairie@ville.example"
               for m in sink.messages)
    assert all(b"Pay now." in m.data for m in sink.messages)  # the payload stays inside the one message


# -- nothing secret in the logs ------------------------------------------------

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


def full_config(tmp_path: Path, smtp: dict, sink_port: int, tracker_port: int, token_hash: str) -> Path:
    return write_config(
        tmp_path, sink_port,
        smtp=f"""allowed_networks = []
tls_cert = "{smtp['tls_cert']}"
tls_key = "{smtp['tls_key']}"
credentials_file = "{smtp['credentials_file']}"
""",
        tracker=f"""listen_host = "127.0.0.1"
listen_port = {tracker_port}
public_url = "http://127.0.0.1:{tracker_port}"
scanner_window = 0""",
        extra=f"""[admin]
token_hashes = ["{token_hash}"]
[log]
level = "DEBUG"
""",
    )


async def test_a_full_run_logged_at_debug_shows_no_password_token_or_body(tmp_path, secured):
    smtp, cert = secured
    admin_token, admin_hash = new_token()
    marker = "MARQUEUR-CONFIDENTIEL-" + secrets.token_hex(8)
    tracker_port = free_port()
    base = f"http://127.0.0.1:{tracker_port}"
    async with Sink() as sink:
        relay = await Relay.start(full_config(tmp_path, smtp, sink.port, tracker_port, admin_hash))
        try:
            port = relay.port.result()
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_context(cert))
            await client.connect()
            with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                await client.login(USER, WRONG)
            await client.login(USER, PASSWORD)
            body = f"Subject: Convocation\r\nMessage-ID: <secret@ville.example>\r\n\r\n{marker}\r\n"
            await client.sendmail("mairie@ville.example", ["un@conseil.example", "deux@conseil.example"], body)
            await client.quit()
            got = await sink.wait_for(2)
            ack_tokens = [t.decode() for m in got for t in re.findall(rb"/a/([A-Za-z0-9_-]{20,})", m.data)]
            assert len(ack_tokens) == 2
            async with aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as web:
                async with web.get(f"{base}/a/{ack_tokens[0]}") as r:
                    form_key = re.search(r'name="form_key" value="([0-9a-f]+)"', await r.text()).group(1)
                async with web.post(f"{base}/a/{ack_tokens[0]}", data={"form_key": form_key},
                                    allow_redirects=False) as r:
                    assert r.status in (200, 303)
                api = {"Authorization": f"Bearer {admin_token}"}
                for path in ("/api/v1/messages?q=Convocation", "/api/v1/messages/secret@ville.example",
                             "/api/v1/messages/secret@ville.example/bundle"):
                    async with web.get(base + path, headers=api) as r:
                        assert r.status == 200, path
                async with web.post(f"{base}/admin/login", data={"token": admin_token}, allow_redirects=False) as r:
                    assert r.status == 303
        finally:
            relay.proc.send_signal(signal.SIGTERM)
            assert await relay.wait() == 0
    log = relay.log.decode("utf-8", "replace")
    assert "acknowledged" in log and "AUTH from 127.0.0.1 refused" in log and "DEBUG" in log  # it did log
    secrets_seen = {
        "password": PASSWORD, "wrong password": WRONG, "AUTH PLAIN data": auth_plain(USER, PASSWORD),
        "AUTH PLAIN data (wrong)": auth_plain(USER, WRONG), "admin token": admin_token, "body": marker,
        **{f"ack token {n}": token for n, token in enumerate(ack_tokens)},
    }
    leaked = {name: line for name, value in secrets_seen.items() for line in log.splitlines() if value in line}
    assert not leaked, leaked


def test_auth_failure_limiter_counts_an_ipv6_slash64_as_one_client_and_stays_bounded():
    limiter = RateLimiter(per_minute=3)
    for n in range(3):  # one attacker, three addresses of the /64 it holds
        limiter.hit(f"2001:db8:1:2::{n + 1:x}", 1000.0)
    assert limiter.blocked("2001:db8:1:2:ffff::9", 1001.0)
    assert not limiter.blocked("2001:db8:1:3::1", 1001.0) and not limiter.blocked("192.0.2.1", 1001.0)
    for n in range(MAX_TRACKED_CLIENTS + 1000):  # a flood of clients cannot grow the table without end
        limiter.hit(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 1002.0)
    assert limiter.tracked <= MAX_TRACKED_CLIENTS
    assert limiter.blocked("10.0.3.231", 1003.0) is False  # each of those failed once only


def greeting(port: int, source: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return sock, sock.recv(512)


async def test_one_client_cannot_hold_more_than_its_share_of_sessions(tmp_path):
    """Idle sessions per client (an address, an IPv6 /64) are limited: past the limit the
    greeting is 421 and the connection closes, so one client cannot use up the open files."""
    config = relay_config(tmp_path / "data", smtp={"max_sessions_per_client": 3})
    async with running(config) as service:
        port = service.smtp_port
        held = [await asyncio.to_thread(greeting, port, "127.0.0.1") for _ in range(3)]
        try:
            assert all(reply.startswith(b"220 ") for _, reply in held)
            extra, reply = await asyncio.to_thread(greeting, port, "127.0.0.1")
            extra.close()
            assert reply.startswith(b"421 4.7.0"), reply
            other, reply = await asyncio.to_thread(greeting, port, OUTSIDE)  # another client is not affected
            other.close()
            assert reply.startswith(b"220 "), reply
            held.pop()[0].close()

            async def free_again() -> bool:
                sock, reply = await asyncio.to_thread(greeting, port, "127.0.0.1")
                sock.close()
                return reply.startswith(b"220 ")

            await until(free_again, "a session slot after one closed")
        finally:
            for sock, _ in held:
                sock.close()
