"""The corpus through the real relay (Service) to a recording upstream, two recipients each.

For every copy the sink receives: both DKIM signatures pass with dkimpy, OpenDKIM
(RSA and Ed25519) and Mail::DKIM (RSA); the copy carries exactly one acknowledgment
token, its own, registered in ack_tokens for its delivery, and that link acknowledges
through the relay's own tracker page (GET, then the button's POST); signed, encrypted
and forwarded entities arrive byte for byte; attachments are unchanged after decoding;
the stored copy and its delivery record's fingerprint are the SHA-256 of the bytes the
sink received. A message that cannot be given a From with a domain is refused at DATA.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import html
import re
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import aiosmtplib
import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay.certify import dkim
from relay.certify.certifier import _with_trailing_blank
from relay.certify.message import read_facts, to_crlf
from relay.config import DKIMConfig
from relay.evidence.archive import read_zip
from tests.support.dkimcheck import dkimpy_results, mail_dkim_results, opendkim_results, tokens_in
from tests.support.relay import relay_config, running
from tests.support.sink import Sink
from tracker.admin_auth import new_token
from tracker.app import make_app

CORPUS_DIR = Path(__file__).resolve().parent.parent / "corpus"
CORPUS = sorted(CORPUS_DIR.glob("*.eml"))
RECIPIENTS = ("elu.un@conseil.example", "elu.deux@conseil.example")
SENDER = "mairie@ville-exemple.fr"
PUBLIC = "https://accuse.ville-exemple.fr"
# Entities that must arrive byte for byte: signed, encrypted, forwarded (wrapped whole, or a part).
KEPT_WHOLE = {"12-smime-signed.eml", "13-smime-pkcs7-mime.eml", "14-pgp-mime-signed.eml", "15-pgp-mime-encrypted.eml",
              "33-digest.eml", "44-toplevel-rfc822.eml", "45-smime-opaque-signed.eml"}
WAIT_SECONDS = 60.0
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
FORM_KEY = re.compile(r'name="form_key" value="([0-9a-f]+)"')


def certifying_config(tmp_path: Path, sink_port: int, tracker: bool = False, language: str = "fr",
                      **sections) -> tuple:
    entry = dkim.generate_keys(tmp_path / "keys", "ville-exemple.fr", "rsa", "ed")
    config = relay_config(tmp_path / "data", sink_port, **sections,
                          tracker={"enabled": tracker, "listen_host": "127.0.0.1", "listen_port": 0, "public_url": PUBLIC,
                                   "language": language})
    keyring = dkim.Keyring.from_config(DKIMConfig(domains=[entry]))
    return dataclasses.replace(config, dkim=DKIMConfig(domains=[entry])), keyring


async def submit(port: int, data: bytes, sender: str = SENDER) -> None:
    options = []
    if not data.isascii():
        options.append("BODY=8BITMIME")
    if not sender.isascii() or not data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0].isascii():
        options.append("SMTPUTF8")
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as client:
        errors, _ = await client.sendmail(sender, list(RECIPIENTS), data, mail_options=options)
        assert not errors


async def stored_delivery(service, recipient: str, original: bytes) -> dict:
    """The delivery of ``original`` to ``recipient``: found by Message-ID, else the only submission."""
    message_id = read_facts(original).message_id
    where, params = ("s.message_id = ?", [message_id]) if message_id else ("1 = 1", [])
    rows = await service.store.fetchall(
        "SELECT d.id, d.copy_sha256, d.record_digest FROM deliveries d JOIN submissions s ON s.id = d.submission_id"
        f" WHERE d.recipient = ? AND {where}",
        [recipient, *params],
    )
    assert len(rows) == 1
    return dict(rows[0])


def check_dkim(data: bytes, keyring: dkim.Keyring, workdir: Path) -> None:
    assert dkimpy_results(data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}
    assert opendkim_results(data, keyring, workdir) == {"rsa-sha256": True, "ed25519-sha256": True}
    assert mail_dkim_results(data, keyring, workdir).get("rsa-sha256") == "pass"


def entity(message: bytes) -> bytes:
    """A message's MIME entity as received: its Content-* fields, the empty line, its body."""
    head, _, body = _with_trailing_blank(to_crlf(message)).partition(b"\r\n\r\n")
    fields = [f + b"\r\n" for f in re.split(rb"\r\n(?![ \t])", head) if f.lower().startswith(b"content-")]
    return b"".join(fields) + b"\r\n" + body


async def acknowledge(service, token: str, delivery_id: int) -> None:
    """The member's way: the page from the link, then its button's POST; the receipt is recorded."""
    page = f"http://127.0.0.1:{service.tracker.port}/a/{token}"
    async with aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
        async with http.get(page) as response:
            assert response.status == 200
            key = FORM_KEY.search(await response.text()).group(1)
        async with http.post(page, data={"form_key": key}) as response:
            assert response.status == 200
    assert await service.store.fetchone("SELECT 1 FROM receipts WHERE delivery_id = ?", (delivery_id,))


async def check_copies(service, sink: Sink, original: bytes, name: str, keyring, workdir: Path) -> None:
    tokens = {}
    for recipient in RECIPIENTS:
        (got,) = [m for m in sink.to(recipient) if m.data.count(b"DKIM-Signature") and _same_submission(m, name)]
        check_dkim(got.data, keyring, workdir / recipient)
        delivery = await stored_delivery(service, recipient, original)
        sent_sha = hashlib.sha256(got.data).hexdigest()
        assert delivery["copy_sha256"] == sent_sha
        assert await service.store.get_blob(sent_sha) == got.data
        record = (await service.store.get_record(delivery["record_digest"])).fields
        assert record["copy_sha256"] == sent_sha and record["recipient"] == recipient
        assert {k["algorithm"] for k in record["dkim"]} == {"rsa-sha256", "ed25519-sha256"}
        assert read_facts(got.data).attachments == read_facts(original).attachments
        found = tokens_in(got.data)
        stored = {
            r["token_sha256"]
            for r in await service.store.fetchall(
                "SELECT token_sha256 FROM ack_tokens WHERE delivery_id = ?", (delivery["id"],)
            )
        }
        assert {hashlib.sha256(t.encode()).hexdigest() for t in found} == stored
        assert len(found) == 1 and record["ack_link_inserted"] and record["ack_link_reason"] is None
        tokens[recipient] = found
        if name in KEPT_WHOLE:
            assert entity(original) in got.data
        if service.tracker is not None:
            await acknowledge(service, next(iter(found)), delivery["id"])
    assert tokens[RECIPIENTS[0]] != tokens[RECIPIENTS[1]]


def _same_submission(received, name: str) -> bool:
    number = name.split("-", 1)[0]
    return f"corpus-{int(number)}@".encode() in received.data or name.startswith("09-")


async def wait_delivered(service, count: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        row = await service.store.fetchone("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'delivered'")
        if row["n"] >= count:
            return
        stuck = await service.store.fetchall("SELECT recipient, state, last_reply FROM deliveries WHERE state != 'delivered'")
        assert time.monotonic() < deadline, [dict(r) for r in stuck]
        await asyncio.sleep(0.05)


@pytest.mark.external
async def test_corpus_through_the_relay(tmp_path: Path) -> None:
    async with Sink() as sink:
        config, keyring = certifying_config(tmp_path, sink.port, tracker=True)
        async with running(config) as service:
            for path in CORPUS:
                await submit(service.smtp_port, path.read_bytes())
            await wait_delivered(service, 2 * len(CORPUS))
            assert len(sink.messages) == 2 * len(CORPUS)
            for path in CORPUS:
                if path.name == "09-no-date-no-msgid.eml":
                    continue  # checked below, alone: it has no Message-ID to find it by
                await check_copies(service, sink, path.read_bytes(), path.name, keyring, tmp_path / "verify" / path.stem)


@pytest.mark.external
async def test_message_without_message_id_gets_one_shared_by_both_copies(tmp_path: Path) -> None:
    name = "09-no-date-no-msgid.eml"
    original = (CORPUS_DIR / name).read_bytes()
    async with Sink() as sink:
        config, keyring = certifying_config(tmp_path, sink.port)
        async with running(config) as service:
            await submit(service.smtp_port, original)
            await wait_delivered(service, 2)
            await check_copies(service, sink, original, name, keyring, tmp_path / "verify")
            ids = {m.data.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0] for m in sink.messages}
            sub = await service.store.fetchone("SELECT id, message_id FROM submissions")
            assert ids == {f"<{sub['id']}@ville-exemple.fr>".encode()}
            assert sub["message_id"] == f"<{sub['id']}@ville-exemple.fr>"


@pytest.mark.external
@pytest.mark.slow
async def test_twenty_megabyte_message_through_the_relay(tmp_path: Path) -> None:
    attachment = bytes(range(256)) * (15 * 2**20 // 256)
    original = (
        b"From: mairie@ville-exemple.fr\r\nTo: conseil@conseil.example\r\nSubject: Dossier complet\r\n"
        b"Date: Tue, 01 Dec 2026 09:00:00 +0100\r\nMessage-ID: <corpus-99@convocations.ville-exemple.fr>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=big\r\n\r\n"
        b"--big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLe dossier est joint.\r\n"
        b"--big\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=dossier.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(attachment).replace(b"\n", b"\r\n")
        + b"--big--\r\n"
    )
    assert len(original) > 20 * 10**6
    async with Sink() as sink:
        config, keyring = certifying_config(tmp_path, sink.port)
        async with running(config) as service:
            await submit(service.smtp_port, original)
            await wait_delivered(service, 2)
            await check_copies(service, sink, original, "99-big.eml", keyring, tmp_path / "verify")



async def test_sender_domain_without_keys_is_refused_at_mail_when_configured(tmp_path: Path) -> None:
    async with Sink() as sink:
        config, _ = certifying_config(tmp_path, sink.port)
        config = dataclasses.replace(config, dkim=dataclasses.replace(config.dkim, unknown_domain="refuse"))
        async with running(config) as service:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, timeout=30) as client:
                await client.ehlo()
                refused = await client.execute_command(b"MAIL", b"FROM:<x@elsewhere.example>")
                assert (refused.code, refused.message) == (550, "5.7.1 This relay does not sign mail from that sender's domain")
                for sender in ("mairie@ville-exemple.fr", "dgs@services.ville-exemple.fr", ""):
                    await client.rset()
                    reply = await client.execute_command(b"MAIL", f"FROM:<{sender}>".encode())
                    assert reply.code == 250, (sender, reply)


async def test_eight_bit_parts_stay_eight_bit_once_the_upstream_announced_8bitmime(tmp_path: Path) -> None:
    original = (CORPUS_DIR / "02-utf8-8bit.eml").read_bytes()
    async with Sink() as sink:
        config, keyring = certifying_config(tmp_path, sink.port)
        async with running(config) as service:
            await submit(service.smtp_port, (CORPUS_DIR / "01-ascii-plain.eml").read_bytes())
            await wait_delivered(service, 2)  # the upstream's EHLO is known from here on
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, timeout=30) as client:
                await client.sendmail(SENDER, list(RECIPIENTS), original)  # 8-bit, without BODY=8BITMIME
            await wait_delivered(service, 4)
    for got in sink.messages[2:]:
        assert not got.data.isascii() and b"Content-Transfer-Encoding: 8bit" in got.data
        assert "BODY=8BITMIME" in got.mail_options
        assert dkimpy_results(got.data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}


async def test_dsn_is_signed_without_a_link_even_when_unknown_domains_are_refused(tmp_path: Path) -> None:
    async with Sink() as sink:
        sink.script(RECIPIENTS[1], ["550 5.1.1 no such user"])
        config, keyring = certifying_config(tmp_path, sink.port)
        config = dataclasses.replace(config, dkim=dataclasses.replace(config.dkim, unknown_domain="refuse"))
        async with running(config) as service:
            await submit(service.smtp_port, (CORPUS_DIR / "01-ascii-plain.eml").read_bytes())
            got = await sink.wait_for(2)
    dsn = next(m for m in got if m.mail_from == "")
    assert dsn.rcpt_tos == (SENDER,) and b"multipart/report" in dsn.data
    assert dkimpy_results(dsn.data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}
    assert tokens_in(dsn.data) == set()


@pytest.mark.external
async def test_a_message_without_a_from_domain_is_refused_at_data_unless_the_envelope_sender_supplies_it(
    tmp_path: Path,
) -> None:
    original = (CORPUS_DIR / "41-from-without-domain.eml").read_bytes()
    token, digest = new_token()
    async with Sink() as sink:
        config, keyring = certifying_config(tmp_path, sink.port, admin={"token_hashes": [digest]})
        async with running(config) as service:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, timeout=30) as client:
                with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                    await client.sendmail("", list(RECIPIENTS), original)  # the null sender has no domain
                assert refused.value.code == 550 and refused.value.message.startswith("5.6.0 ")
                assert "add a From: field with a full address" in refused.value.message
                await client.sendmail(SENDER, list(RECIPIENTS), original)  # the session goes on
            await wait_delivered(service, 2)
            (sub,) = await service.store.fetchall("SELECT record_digest FROM submissions")
            assert (await service.store.get_record(sub["record_digest"])).fields["from_added"] == SENDER
            # The repair, shown in the proof bundle's attestation.
            async with TestClient(TestServer(make_app(config, service.store), host="127.0.0.1")) as web:
                mid = quote(read_facts(original).message_id, safe="")
                bundle = await web.get(f"/api/v1/messages/{mid}/bundle", headers={"Authorization": f"Bearer {token}"})
                assert bundle.status == 200
                attestation = html.unescape(read_zip(await bundle.read())["attestation.html"].decode())
            assert "<th>En-tête From ajouté</th>" in attestation and f"<code>From: {SENDER}</code>" in attestation
    assert len(sink.messages) == 2
    for got in sink.messages:
        assert re.findall(rb"(?im)^from:[^\r]*", got.data.split(b"\r\n\r\n", 1)[0]) == [f"From: {SENDER}".encode()]
        check_dkim(got.data, keyring, tmp_path / "verify" / got.rcpt_tos[0])
