"""The admin page's convocation section in a real browser (Debian's chromium driven by
Playwright): an admin sets the meeting date in the form, and the page shows the red badge, the
deadline and the register's wording; the upcoming meetings page lists the meeting."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

import pytest

from relay.law.deadline import paris_date
from relay.law.register import french_date
from tests.conftest import require_tool
from tests.integration.test_admin_browser import CHROMIUM_ARGS
from tests.support.proved import ACKNOWLEDGER, MESSAGE_ID, RECIPIENTS, proved_message

pytestmark = pytest.mark.external


async def test_admin_sets_the_meeting_and_sees_the_badge_deadline_and_wording(tmp_path, artifacts_dir):
    chromium = require_tool("chromium")
    from playwright.async_api import async_playwright

    # Two days ahead in Paris: a commune owes 5 jours francs, so today's convocation is late.
    meeting = paris_date(dt.datetime.now(dt.UTC)) + dt.timedelta(days=2)
    latest = meeting - dt.timedelta(days=6)
    async with proved_message(tmp_path, law={"assembly": "commune"}) as p, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(locale="fr-FR", extra_http_headers={"Accept-Language": "fr"})
            page = await context.new_page()
            await page.goto(p.base + "/admin/login")
            await page.fill("#token", p.token)
            await page.click("form.login button")
            await page.wait_for_url("**/admin/")
            await page.goto(f"{p.base}/admin/messages/{quote(MESSAGE_ID, safe='')}")
            badge = page.locator("#law-status")
            assert await badge.inner_text() == "Délai non vérifié"  # the subject's 3 December is past
            assert "n'étant pas connue du relais" in await page.locator("#law-wording").inner_text()

            await page.click("details.law-set summary")
            await page.fill("#law-meeting-input", f"{meeting.isoformat()}T18:30")
            await page.fill("#law-set-by", "Secrétaire de mairie")
            await page.click("details.law-set button")
            await page.wait_for_url("**#convocation")
            assert await badge.inner_text() == "Hors délai"
            color = await badge.evaluate("e => getComputedStyle(e).backgroundColor")
            assert color == "rgb(185, 28, 28)", color  # red
            deadline = await page.locator("#law-deadline").inner_text()
            assert (
                f"5 jour(s) franc(s) (article L. 2121-12 du CGCT) : envoi au plus tard le {french_date(latest)}"
                in deadline
            )
            meeting_text = await page.locator("#law-meeting").inner_text()
            assert meeting_text == f"{french_date(meeting)} à 18 h 30 (fixée par un administrateur)"
            wording = await page.locator("#law-wording").inner_text()
            assert f"la convocation à la séance du {french_date(meeting)} à 18 h 30" in wording
            assert "à 3 membres" in wording and "alors que le délai légal est de 5 jours francs" in wording
            assert "Elle a été remise dans les délais à 0 membre sur 3." in wording
            assert "1 membre sur 3 en a accusé réception." in wording
            rows = page.locator("table.law-members tbody tr")
            assert await rows.count() == len(RECIPIENTS)
            await page.screenshot(path=str(artifacts_dir / "admin-convocation.png"), full_page=True)

            await page.click("nav.admin-nav >> text=Séances à venir")
            await page.wait_for_url("**/admin/meetings")
            table = await page.locator("table.meetings").inner_text()
            assert "Hors délai" in table and "1 / 3" in table
            assert all(r in table for r in RECIPIENTS if r != ACKNOWLEDGER) and ACKNOWLEDGER not in table
            await page.screenshot(path=str(artifacts_dir / "admin-meetings.png"), full_page=True)
        finally:
            await browser.close()
