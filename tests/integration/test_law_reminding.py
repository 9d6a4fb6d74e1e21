"""Reminders through the real relay: a convocation to three members, one acknowledges; reminders
go, on schedule, to exactly the others, as certified messages of their own carrying each member's
same link, stop at the acknowledgment, and never come too close to the meeting or after it."""

from __future__ import annotations

import datetime as dt
import email
import io
import re
from email import policy
from email.message import EmailMessage
from urllib.parse import quote

import aiohttp
import aiosmtplib

from relay.evidence.archive import read_zip
from relay.law.deadline import PARIS
from relay.law.meeting import message_text
from relay.proof.gather import build_proof
from relay.store.law import reminders_of
from tests.support.polling import until
from tests.support.proved import acknowledge
from tests.support.relay import relay_config, running
from tests.support.sink import Sink
from tracker.admin_auth import new_token

ALICE, BOB, CAROL = "alice@example.net", "bob@example.net", "carol@example.net"
MESSAGE_ID = "<cm-2026-12-15@mairie.example>"
T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=PARIS).timestamp()  # Tuesday 1 December, 10:00 in Paris
HOUR = 3600.0
LINK = re.compile(r"http://127\.0\.0\.1:1/a/[A-Za-z0-9_-]+")


def convocation() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mairie <convocations@mairie.example>"
    msg["To"] = "conseil@mairie.example"
    msg["Subject"] = "Convocation au conseil municipal du mardi 15 décembre 2026"
    msg["Message-ID"] = MESSAGE_ID
    msg.set_content("Le conseil municipal se réunira le mardi 15 décembre 2026 à 18h30.\n")
    return msg.as_bytes()


def links(data: bytes) -> set[str]:
    return set(LINK.findall(message_text(email.message_from_bytes(data, policy=policy.default))))


async def test_reminders_go_to_exactly_the_members_who_have_not_acknowledged(tmp_path):
    now = [T0]
    token, token_hash = new_token()
    async with Sink() as sink:
        config = relay_config(
            tmp_path,
            upstream_port=sink.port,
            tracker={
                "enabled": True,
                "listen_host": "127.0.0.1",
                "listen_port": 0,
                "public_url": "http://127.0.0.1:1",
                "scanner_window": 0,
            },
            admin={"token_hashes": [token_hash]},
            law={"assembly": "commune"},
            reminders={"enabled": True, "after_hours": [48, 96], "stop_before_hours": 24, "interval": 3600},
        )
        async with running(config, clock=lambda: now[0]) as service:
            base = f"http://127.0.0.1:{service.tracker.port}"
            await aiosmtplib.send(
                convocation(),
                sender="convocations@mairie.example",
                recipients=[ALICE, BOB, CAROL],
                hostname="127.0.0.1",
                port=service.smtp_port,
            )
            copies = {m.rcpt_tos[0]: m.data for m in await sink.wait_for(3)}
            # The sink's 250 comes before the relay records the delivery: only delivered copies are reminded.
            await until(
                lambda: service.store.fetchone(
                    "SELECT COUNT(*) FROM deliveries WHERE state = 'delivered' HAVING COUNT(*) = 3"
                ),
                "the three deliveries recorded",
            )
            link = {rcpt: links(data).pop() for rcpt, data in copies.items()}
            async with aiohttp.ClientSession() as session:
                await acknowledge(session, base + link[BOB].removeprefix("http://127.0.0.1:1"))
            await until(lambda: service.store.fetchone("SELECT 1 FROM receipts"), "Bob's acknowledgment")
            reminders = service.reminders

            now[0] = T0 + 47 * HOUR
            assert await reminders.send_due() == 0  # the first reminder is due after 48 hours
            now[0] = T0 + 49 * HOUR
            assert await reminders.send_due() == 2
            assert await reminders.send_due() == 0  # once each
            sent = (await sink.wait_for(5))[3:]
            assert sorted(m.rcpt_tos[0] for m in sent) == [ALICE, CAROL]  # never Bob, who acknowledged
            for m in sent:
                rcpt = m.rcpt_tos[0]
                msg = email.message_from_bytes(m.data, policy=policy.default)
                assert msg["Subject"] == "Rappel : Convocation au conseil municipal du mardi 15 décembre 2026"
                assert msg["References"] == MESSAGE_ID and msg["In-Reply-To"] == MESSAGE_ID
                assert msg["Message-ID"] != MESSAGE_ID and msg["Message-ID"].startswith("<reminder-")
                assert msg["DKIM-Signature"] is not None  # certified: signed, stored, with its records
                assert links(m.data) == {link[rcpt]}  # the member's same link, and no other
                assert "pour la séance du mardi 15 décembre 2026 à 18 h 30" in message_text(msg)
            await until(
                lambda: service.store.fetchone(
                    "SELECT COUNT(*) FROM reminders r JOIN deliveries d ON d.submission_id = r.submission_id"
                    " WHERE d.state = 'delivered' HAVING COUNT(*) = 2"
                ),
                "the reminders' deliveries recorded",
            )
            rows = await service.store.fetchall(
                "SELECT d.state, d.record_digest FROM reminders r JOIN deliveries d ON d.submission_id = r.submission_id"
            )
            assert len(rows) == 2 and all(r["record_digest"] for r in rows)

            # Carol acknowledges from the reminder: the link is her convocation's, so that is what she acknowledges.
            async with aiohttp.ClientSession() as session:
                await acknowledge(session, base + link[CAROL].removeprefix("http://127.0.0.1:1"))
            await until(lambda: service.store.fetchone("SELECT COUNT(*) FROM receipts HAVING COUNT(*) = 2"), "Carol")
            now[0] = T0 + 97 * HOUR
            assert await reminders.send_due() == 1  # the second reminder, to Alice alone
            assert (await sink.wait_for(6))[5].rcpt_tos == (ALICE,)
            now[0] = T0 + 200 * HOUR
            assert await reminders.send_due() == 0  # two scheduled reminders, no more

            # The admin's button: one more now to whoever has not acknowledged, never too close to the meeting.
            async with aiohttp.ClientSession() as session:
                cookie = await login(session, base, token)
                page = f"{base}/admin/messages/{quote(MESSAGE_ID, safe='')}"
                async with session.post(f"{page}/remind", headers=cookie, allow_redirects=False) as r:
                    assert r.status == 303 and "reminded=1" in r.headers["Location"]
                assert (await sink.wait_for(7))[6].rcpt_tos == (ALICE,)
                now[0] = dt.datetime(2026, 12, 14, 19, 0, tzinfo=PARIS).timestamp()  # less than 24 h before
                cookie = await login(session, base, token)  # the session has expired meanwhile
                async with session.post(f"{page}/remind", headers=cookie, allow_redirects=False) as r:
                    assert "reminded=0" in r.headers["Location"]
                async with session.get(page, headers=cookie) as r:
                    html = await r.text()
                assert "Rappels mis en file" not in html  # the count is shown after a press only
                alice = html[html.index('<section class="recipient" data-recipient="alice@example.net">') :]
                alice = alice[: alice.index("</section>")]
                assert alice.count("Rappel mis en file") == 3
            assert await reminders.send_due() == 0
            out = io.BytesIO()
            await build_proof(service.store, MESSAGE_ID, out, now=now[0], timezone="Europe/Paris")
            attestation = read_zip(out.getvalue())["attestation.html"].decode()
            assert "<th>Rappels</th>" in attestation and attestation.count("<td>aucun</td>") == 1  # Bob
            assert {k: len(v) for k, v in (await reminders_of(service.store, await sid(service))).items()} == {
                ALICE: 3, CAROL: 1,
            }  # fmt: skip


async def login(session: aiohttp.ClientSession, base: str, token: str) -> dict[str, str]:
    async with session.post(f"{base}/admin/login", data={"token": token}, allow_redirects=False) as r:
        assert r.status == 303
        return {"Cookie": r.headers["Set-Cookie"].split(";")[0]}


async def sid(service) -> str:
    return (await service.store.fetchone("SELECT id FROM submissions WHERE message_id = ?", (MESSAGE_ID,)))["id"]
