"""A copy that leaves without an acknowledgment link can never be acknowledged: it is never silent.

Through the real relay, for a sender whose rule asks for no link: a WARNING log line with
the reason, a webhook event ``copy.unlinked``, the counter
``estampille_copies_without_link_total{reason}``, the API's ``unlinked_reason``, a badge on
the admin page and a line in the attestation. Another sender's copies, with their links,
raise none of these.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from urllib.parse import quote

import aiohttp
import aiosmtplib
from aiohttp.test_utils import TestClient, TestServer

from relay.config import AckSender
from relay.evidence.archive import read_zip
from tests.integration.test_admin_api import login
from tests.integration.test_certified_delivery import RECIPIENTS, certifying_config, wait_delivered
from tests.integration.test_metrics import scrape
from tests.integration.test_webhooks import SECRET, receiver  # noqa: F401 - the fixture
from tests.support.polling import until
from tests.support.relay import running
from tests.support.sink import Sink, free_port
from tracker.admin_auth import COOKIE, new_token
from tracker.app import make_app

REASON = "acknowledgment links are disabled for this sender"
NO_LINK_SENDER = "annonces@ville-exemple.fr"
LINK_SENDER = "mairie@ville-exemple.fr"


def message(n: int, sender: str) -> bytes:
    return (f"From: Mairie <{sender}>\r\nTo: Conseil <conseil@ville-exemple.fr>\r\nSubject: Annonce {n}\r\n"
            f"Date: Tue, 01 Dec 2026 09:00:00 +0100\r\nMessage-ID: <unlinked-{n}@ville-exemple.fr>\r\n"
            "\r\nLe conseil se reunira le 12 decembre.\r\n").encode()


async def test_a_copy_without_a_link_is_told_everywhere(tmp_path: Path, caplog, receiver) -> None:  # noqa: F811
    token, digest = new_token()
    metrics_port = free_port()
    caplog.set_level(logging.WARNING, logger="estampille.deliver")
    async with Sink() as sink:
        config, _ = certifying_config(
            tmp_path, sink.port, language="browser",  # the admin page in both languages
            ack={"senders": [AckSender(match=NO_LINK_SENDER, insert=False, rewrite_patterns=[])]},
            webhooks={"urls": [receiver.url], "secret": SECRET},
            admin={"token_hashes": [digest], "metrics_listen_host": "127.0.0.1", "metrics_listen_port": metrics_port},
        )
        async with running(config) as service, aiohttp.ClientSession() as http:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port, timeout=30) as client:
                await client.sendmail(NO_LINK_SENDER, list(RECIPIENTS), message(1, NO_LINK_SENDER))
                await client.sendmail(LINK_SENDER, list(RECIPIENTS), message(2, LINK_SENDER))
            await wait_delivered(service, 4)

            # The log: one WARNING per copy, with the reason.
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                        and "carries no acknowledgment link" in r.getMessage()]
            assert sorted(w.split(" to ")[1] for w in warnings) == sorted(f"{r}: the copy carries no acknowledgment"
                                                                          f" link: {REASON}" for r in RECIPIENTS)
            # The webhook: one copy.unlinked per copy of the first message, none for the second.
            # Events are sent oldest first: once the four 'delivered' are in, every copy.unlinked is.
            await until(lambda: sum(e["event"] == "delivered" for e in receiver.events) == 4, "delivered events")
            unlinked = [e for e in receiver.events if e["event"] == "copy.unlinked"]
            assert len(unlinked) == 2
            assert {e["data"]["recipient"] for e in unlinked} == set(RECIPIENTS)
            assert {(e["data"]["message_id"], e["data"]["reason"]) for e in unlinked} == {
                ("<unlinked-1@ville-exemple.fr>", REASON)}
            # The counter, by reason.
            samples = await scrape(http, metrics_port)
            assert samples[f'estampille_copies_without_link_total{{reason="{REASON}"}}'] == 2
            assert sum(v for k, v in samples.items() if k.startswith("estampille_copies_without_link_total")) == 2

            # The API, the admin page and the attestation, read from what the relay stored.
            app = make_app(config, service.store, clock=service.clock)
            async with TestClient(TestServer(app, host="127.0.0.1")) as web:
                bearer = {"Authorization": f"Bearer {token}"}
                sid, _ = await login(web, token)
                for n, reason in ((1, REASON), (2, None)):
                    expected = 2 if reason else 0
                    mid = quote(f"<unlinked-{n}@ville-exemple.fr>", safe="")
                    view = await (await web.get(f"/api/v1/messages/{mid}", headers=bearer)).json()
                    assert [r["unlinked_reason"] for r in view["recipients"]] == [reason, reason]
                    for lang, badge in (("fr", "copie sans lien d'accusé : "),
                                        ("en", "copy without an acknowledgment link: ")):
                        page = await (await web.get(f"/admin/messages/{mid}", headers={
                            "Cookie": f"{COOKIE}={sid}", "Accept-Language": lang})).text()
                        assert html.unescape(page).count(badge + REASON) == expected, lang
                    bundle = await web.get(f"/api/v1/messages/{mid}/bundle", headers=bearer)
                    assert bundle.status == 200
                    attestation = html.unescape(read_zip(await bundle.read())["attestation.html"].decode())
                    assert attestation.count(f"sans lien d'accusé de réception</span> : {REASON}") == expected
