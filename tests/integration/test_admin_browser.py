"""The admin pages in a real browser (Debian's chromium driven by Playwright): log in,
search a Message-ID, see each recipient's state, download the bundle."""

from __future__ import annotations

import zipfile

import pytest

from relay.evidence.archive import read_zip
from relay.evidence.ots_verify import required_heights
from tests.conftest import require_tool
from tests.support.proved import ACKNOWLEDGER, MESSAGE_ID, RECIPIENTS, SUBJECT, proved_message

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.external


async def test_admin_logs_in_finds_the_message_and_downloads_its_proof(tmp_path, artifacts_dir):
    chromium = require_tool("chromium")
    from playwright.async_api import async_playwright

    async with proved_message(tmp_path) as p:
        await p.anchor()
        height = await p.confirm()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(accept_downloads=True, locale="fr-FR",
                                                    extra_http_headers={"Accept-Language": "fr"})
                page = await context.new_page()
                await page.goto(p.base + "/admin/")
                assert page.url.endswith("/admin/login")  # no session: the login form, nothing else
                await page.screenshot(path=str(artifacts_dir / "admin-login.png"), full_page=True)
                await page.fill("#token", p.token)
                await page.click("form.login button")
                await page.wait_for_url("**/admin/")

                await page.fill("#q", MESSAGE_ID)
                await page.click("form.search button")
                await page.wait_for_url("**/admin/?q=*")
                rows = page.locator("table.messages tbody tr")
                assert await rows.count() == 1
                assert SUBJECT in await rows.first.inner_text()
                await page.screenshot(path=str(artifacts_dir / "admin-search.png"), full_page=True)

                await rows.first.locator("a").click()
                await page.wait_for_selector("section.recipient")
                assert await page.locator("#message-id").inner_text() == MESSAGE_ID
                assert "Accusés de réception : 1 sur 3" in await page.locator("#ack-bar-label").inner_text()
                for rcpt in RECIPIENTS:
                    section = page.locator(f'section.recipient[data-recipient="{rcpt}"]')
                    text = await section.inner_text()
                    assert "remis" in text and f"bloc {height}" in text, text
                    assert ("accusé le" in text) == (rcpt == ACKNOWLEDGER), text
                missing = await page.locator("ul.missing").inner_text()
                assert ACKNOWLEDGER not in missing and all(r in missing for r in RECIPIENTS if r != ACKNOWLEDGER)
                await page.screenshot(path=str(artifacts_dir / "admin-message.png"), full_page=True)

                async with page.expect_download() as info:
                    await page.click("a.button[download]")
                download = await info.value
                target = tmp_path / download.suggested_filename
                await download.save_as(target)
            finally:
                await browser.close()

    assert target.name.startswith("proof-") and zipfile.is_zipfile(target)
    files = read_zip(target.read_bytes())
    assert len([n for n in files if n.startswith("copies/")]) == 3
    assert all(required_heights(data) == [height] for name, data in files.items() if name.endswith(".ots"))
