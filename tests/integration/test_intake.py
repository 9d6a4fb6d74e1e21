"""SMTP intake policy with real clients: allowlist, AUTH, parameters, limits, failures of our own."""

from __future__ import annotations

import asyncio
import smtplib

import aiosmtplib
import pytest

from relay.certify.message import to_crlf
from relay.errors import StoreError
from relay.smtp.auth import write_password
from relay.smtp.intake import start_intake
from relay.smtp.spool import Spool
from relay.store import INLINE_MAX, Store
from tests.conftest import require_tool
from tests.integration.test_relay import message
from tests.support.relay import relay_config, running
from tests.support.tlscert import client_context, self_signed

PASSWORD = "correct horse battery staple"


async def count_rows(store: Store, table: str) -> int:
    row = await store.fetchone(f"SELECT COUNT(*) AS n FROM {table}")
    return row["n"]


def stored_files(data_dir) -> list:
    return [p for p in (data_dir / "messages").rglob("*") if p.is_file()]


async def test_client_outside_allowlist_gets_571_and_nothing_is_stored(tmp_path):
    config = relay_config(tmp_path, smtp={"allowed_networks": ["192.0.2.0/24"]})
    async with running(config) as service:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port)
        await client.connect()
        await client.mail("a@example.org")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("b@example.net")
        assert refused.value.code == 550 and refused.value.message.startswith("5.7.1")
        with pytest.raises(aiosmtplib.SMTPResponseException) as no_data:
            await client.data(message())
        assert no_data.value.code == 503
        await client.quit()
        assert await count_rows(service.store, "submissions") == 0
        assert await count_rows(service.store, "deliveries") == 0
        assert await count_rows(service.store, "message_bytes") == 0
    assert stored_files(tmp_path) == []


@pytest.fixture
def credentials(tmp_path):
    path = tmp_path / "credentials"
    write_password(path, "mairie", PASSWORD, b"0123456789abcdef")
    return path


def tls_config(tmp_path, credentials, **smtp):
    cert, key = self_signed(tmp_path)
    keys = {"allowed_networks": [], "credentials_file": str(credentials), "tls_cert": str(cert), "tls_key": str(key)}
    return relay_config(tmp_path, smtp={**keys, **smtp}), cert


async def test_auth_in_plain_text_is_refused(tmp_path, credentials):
    config, _ = tls_config(tmp_path, credentials)
    async with running(config) as service:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, start_tls=False)
        await client.connect()
        await client.ehlo()
        assert not client.supports_extension("auth")
        response = await client.execute_command(b"AUTH", b"PLAIN", b"AG1haXJpZQBjb3JyZWN0")
        assert response.code == 538
        await client.quit()


async def test_swaks_auth_without_tls_fails(tmp_path, credentials):
    swaks = require_tool("swaks")
    config, _ = tls_config(tmp_path, credentials)
    async with running(config) as service:
        proc = await asyncio.create_subprocess_exec(
            swaks, "--server", f"127.0.0.1:{service.smtp_port}", "--from", "a@example.org", "--to", "b@example.net",
            "--auth", "PLAIN", "--auth-user", "mairie", "--auth-password", PASSWORD,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode != 0
        assert b"250 2.0.0 Ok: queued" not in out
        assert await count_rows(service.store, "submissions") == 0


async def test_auth_after_starttls(tmp_path, credentials):
    config, cert = tls_config(tmp_path, credentials)
    async with running(config) as service:
        wrong = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, start_tls=True,
                                tls_context=client_context(cert))
        await wrong.connect()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await wrong.login("mairie", "wrong password")
        assert refused.value.code == 535
        await wrong.quit()

        right = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, start_tls=True,
                                tls_context=client_context(cert))
        await right.connect()
        response = await right.login("mairie", PASSWORD)
        assert response.code == 235
        _, text = await right.sendmail("a@example.org", ["b@example.net"], message())
        assert text.startswith("2.0.0 Ok: queued as")
        await right.quit()
        row = await service.store.fetchone("SELECT auth_user, tls FROM submissions")
    assert row["auth_user"] == "mairie" and row["tls"].startswith("TLSv1.")


async def test_auth_login_mechanism_with_smtplib(tmp_path, credentials):
    config, cert = tls_config(tmp_path, credentials)

    def session(port: int) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=client_context(cert))
            client.ehlo("client.test")
            client.user, client.password = "mairie", PASSWORD
            return client.auth("LOGIN", client.auth_login)

    async with running(config) as service:
        code, _ = await asyncio.to_thread(session, service.smtp_port)
    assert code == 235


async def test_failed_auth_is_rate_limited(tmp_path, credentials):
    config, cert = tls_config(tmp_path, credentials, auth_failures_per_minute=2)
    async with running(config) as service:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, start_tls=True,
                                 tls_context=client_context(cert))
        await client.connect()
        await client.ehlo()
        codes = []
        for password in ("bad 1", "bad 2", PASSWORD):
            try:
                codes.append((await client.auth_plain("mairie", password)).code)
            except aiosmtplib.SMTPAuthenticationError as exc:
                codes.append(exc.code)
        client.close()
    assert codes == [535, 535, 454]


async def test_dsn_and_auth_parameters_are_accepted(tmp_path):
    def session(port: int) -> list[int]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            codes = [client.mail("a@example.org", ["AUTH=<>", "RET=HDRS", "ENVID=QQ314159"])[0]]
            codes.append(client.rcpt("b@example.net", ["NOTIFY=NEVER"])[0])
            codes.append(client.rcpt("c@example.net", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;c@example.net"])[0])
            codes.append(client.data(message())[0])
            return codes

    async with running(relay_config(tmp_path)) as service:
        assert await asyncio.to_thread(session, service.smtp_port) == [250, 250, 250, 250]
        sub = await service.store.fetchone("SELECT mail_options FROM submissions")
        rcpts = await service.store.fetchall("SELECT recipient, rcpt_options FROM deliveries ORDER BY id")
    assert "AUTH=<>" in sub["mail_options"] and "ENVID=QQ314159" in sub["mail_options"]
    assert [r["rcpt_options"] for r in rcpts] == ['["NOTIFY=NEVER"]', '["NOTIFY=SUCCESS,FAILURE", "ORCPT=RFC822;C@EXAMPLE.NET"]']


async def test_long_line_accepted_and_oversize_refused(tmp_path):
    long_line = "x" * 2000
    config = relay_config(tmp_path, smtp={"max_message_size": 20_000})
    async with running(config) as service:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port)
        await client.connect()
        _, text = await client.sendmail("a@example.org", ["b@example.net"],
                                        message().replace(b"Bonjour.", long_line.encode()))
        assert text.startswith("2.0.0 Ok: queued as")
        with pytest.raises(aiosmtplib.SMTPResponseException) as too_big:
            await client.sendmail("a@example.org", ["b@example.net"], message(body="y" * 30_000))
        assert too_big.value.code == 552
        await client.quit()
        (sub,) = await service.store.fetchall("SELECT data_sha256 FROM submissions")
        stored = await service.store.get_blob(sub["data_sha256"])
    assert long_line.encode() in stored


async def test_a_small_message_is_kept_in_the_database_and_a_large_one_as_a_file(tmp_path):
    small = to_crlf(message())  # as they travel: CRLF
    large = to_crlf(message(body="Ordre du jour, annexe.\n" * (INLINE_MAX // 20)))
    assert len(small) <= INLINE_MAX < len(large)
    async with running(relay_config(tmp_path, upstream={"kind": "maildir"})) as service:
        for data in (small, large):
            await aiosmtplib.send(data, sender="a@example.org", recipients=["b@example.net"],
                                  hostname="127.0.0.1", port=service.smtp_port)
        subs = await service.store.fetchall("SELECT data_sha256, size FROM submissions ORDER BY size")
        held = await service.store.inline_bytes([s["data_sha256"] for s in subs])
        stored = [await service.store.get_blob(s["data_sha256"]) for s in subs]
    assert [s["size"] for s in subs] == [len(small), len(large)]
    assert list(held) == [subs[0]["data_sha256"]]  # the small one, committed with its rows
    files = {p.name for p in stored_files(tmp_path)}  # (the large one's certified copy is a file too)
    assert subs[1]["data_sha256"] in files and subs[0]["data_sha256"] not in files
    assert stored == [small, large]


async def test_low_disk_gets_452_at_mail(tmp_path):
    config = relay_config(tmp_path, smtp={"min_free_disk_mb": 2**40})
    async with running(config) as service:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port)
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.mail("a@example.org")
        assert refused.value.code == 452 and refused.value.message.startswith("4.3.1")
        await client.quit()


class FailingOnceSpool(Spool):
    """A spool whose store fails for the first message, as a full or broken disk would."""

    failures = 1

    async def accept(self, incoming, now, also=None):
        if self.failures:
            self.failures -= 1
            raise StoreError("injected: disk I/O error")
        return await super().accept(incoming, now, also)


async def test_store_failure_gets_451_and_the_session_stays_usable(tmp_path):
    config = relay_config(tmp_path)
    store = await Store.open(tmp_path)
    server = await start_intake(config, FailingOnceSpool(store))
    try:
        port = server.sockets[0].getsockname()[1]
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            await client.sendmail("a@example.org", ["b@example.net"], message(subject="first"))
        assert failed.value.code == 451 and failed.value.message.startswith("4.3.0")
        assert "injected" not in failed.value.message
        _, text = await client.sendmail("a@example.org", ["c@example.net"], message(subject="second"))
        assert text.startswith("2.0.0 Ok: queued as")
        await client.quit()
        rows = await store.fetchall("SELECT recipient FROM deliveries")
        assert [r["recipient"] for r in rows] == ["c@example.net"]
    finally:
        server.close()
        await store.close()
