"""A member acknowledges in a real browser (Debian's chromium driven by Playwright):
the relay certifies and delivers a convocation to a recording sink; the browser opens
the link found in the delivered copy, presses the button, and the receipt is in the
store. A rewritten link leads the browser on to the exact original URL.
Screenshots go to test-artifacts/ (phone and desktop)."""

from __future__ import annotations

import hashlib
import re
from email.message import EmailMessage

import aiosmtplib
import pytest
from aiohttp import web

from tests.conftest import require_tool
from tests.support.relay import relay_config, running
from tests.support.sink import Sink

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
PUBLIC = "http://127.0.0.1:1"  # the tracker's port is only known once it listens: links are re-based
SUBJECT = "Convocation au conseil municipal du 12 décembre 2026"
DEADLINE = 20.0
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.external


def convocation(recipients: list[str], document: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mairie de Saint-Estampille <convocations@mairie.example>"
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = SUBJECT
    msg["Message-ID"] = "<conseil-2026-12-12@mairie.example>"
    msg.set_content(f"Mesdames et Messieurs les conseillers,\n\nOrdre du jour : {document}\n")
    msg.add_alternative(
        f'<p>Mesdames et Messieurs les conseillers,</p><p><a href="{document.replace("&", "&amp;")}">'
        "Ordre du jour</a></p>",
        subtype="html",
    )
    return msg.as_bytes()


async def document_server() -> tuple[web.AppRunner, int, list[str]]:
    """Where the rewritten link leads: records each request's path and query."""
    seen: list[str] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.Response(text="<!doctype html><title>Ordre du jour</title><h1 id='point-3'>Point 3</h1>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/docs/seance", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1], seen


async def test_member_acknowledges_in_a_real_browser(tmp_path, artifacts_dir) -> None:
    chromium = require_tool("chromium")
    from playwright.async_api import async_playwright

    docs, doc_port, seen = await document_server()
    document = f"http://127.0.0.1:{doc_port}/docs/seance?id=12&point=3#point-3"
    recipients = ["alice@example.net", "bob@example.net"]
    try:
        async with Sink() as sink:
            config = relay_config(
                tmp_path / "data", sink.port,
                tracker={"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0, "public_url": PUBLIC,
                         "language": "browser"},
                ack={"rewrite_patterns": [f"http://127.0.0.1:{doc_port}/docs/"]},
            )
            async with running(config) as service:
                await aiosmtplib.send(convocation(recipients, document), sender="convocations@mairie.example",
                                      recipients=recipients, hostname="127.0.0.1", port=service.smtp_port)
                got = await sink.wait_for(len(recipients))
                base = f"http://127.0.0.1:{service.tracker.port}"
                store = service.store

                async def links(rcpt: str) -> dict[str | None, str]:
                    """The copy's acknowledgment links by target: None for the inserted block."""
                    copy = next(m for m in got if m.rcpt_tos == (rcpt,)).data
                    found = {}
                    for path in set(re.findall(rb"http://127\.0\.0\.1:1(/a/[A-Za-z0-9_-]+)", copy)):
                        token = path.decode()[3:]
                        row = await store.fetchone("SELECT target_url FROM ack_tokens WHERE token_sha256 = ?",
                                                   (hashlib.sha256(token.encode()).hexdigest(),))
                        found[row["target_url"]] = base + path.decode()
                    return found

                alice, bob = await links("alice@example.net"), await links("bob@example.net")
                assert set(alice) == {None, document}, alice

                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                    try:
                        phone = await browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                                                          locale="fr-FR")
                        page = await phone.new_page()
                        await page.goto(alice[None])
                        assert await page.locator("html").get_attribute("lang") == "fr"
                        assert await page.locator("h1").inner_text() == "Accusé de réception"
                        assert SUBJECT in await page.locator("dl.details").inner_text()
                        button = page.get_by_role("button", name="J'accuse réception")
                        await page.screenshot(path=str(artifacts_dir / "ack-page-phone.png"), full_page=True)
                        assert await store.fetchone("SELECT 1 FROM receipts") is None  # showing never acknowledges
                        await button.focus()  # keyboard: the button takes focus and Enter presses it
                        await page.keyboard.press("Enter")
                        await page.wait_for_selector("p.status")
                        assert await page.locator("h1").inner_text() == "Réception confirmée"
                        await page.screenshot(path=str(artifacts_dir / "ack-confirmed-phone.png"), full_page=True)

                        desktop = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB")
                        page = await desktop.new_page()
                        await page.goto(bob[document])
                        assert await page.locator("html").get_attribute("lang") == "en"
                        await page.screenshot(path=str(artifacts_dir / "ack-page-desktop-en.png"), full_page=True)
                        await page.get_by_role("button", name="I acknowledge receipt").click()
                        await page.wait_for_url(document)
                        assert page.url == document
                        assert seen == ["/docs/seance?id=12&point=3"]
                    finally:
                        await browser.close()

                rows = await store.fetchall(
                    "SELECT d.recipient, r.record_digest FROM receipts r JOIN deliveries d ON d.id = r.delivery_id"
                    " ORDER BY d.recipient"
                )
                assert [row["recipient"] for row in rows] == recipients
                for row in rows:
                    record = await store.get_record(row["record_digest"])
                    assert record.fields["kind"] == "acknowledged"
                    assert await store.fetchone("SELECT 1 FROM anchor_leaves WHERE digest = ?", (record.digest,))
                # The browser's own fetches were recorded; headless Chromium says so in its user agent.
                fetches = await store.fetchall("SELECT method, classification, reason FROM fetches")
                assert fetches and all(f["classification"] == "scanner" for f in fetches)
    finally:
        await docs.cleanup()
