"""Drive tracker/static/verify.html in Debian's chromium (Playwright): hand it a bundle, read
back its report (``window.estampilleReport``, the same shape as ``estampille verify --json``'s
status and problem). For the page's tests and its benchmark."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from relay.anchor.headers import format_headers_file

PAGE = Path(__file__).resolve().parents[2] / "tracker" / "static" / "verify.html"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


@asynccontextmanager
async def verify_page(chromium: str, url: str | None = None) -> AsyncIterator[Any]:
    """A chromium page showing verify.html (from file:// unless ``url``), recording every request
    it makes in ``page.requests``."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.requests = []
            page.on("request", lambda request: page.requests.append(request.url))
            await page.goto(url or PAGE.as_uri())
            yield page
        finally:
            await browser.close()


async def check_bundle(page: Any, bundle: bytes, *, headers: dict[int, bytes] | None = None,
                       explorers: tuple[str, ...] = (), regtest: bool = True) -> dict[str, Any]:
    """Give ``bundle`` to the page (headers pasted, or the explorers typed in) and return its report."""
    await page.fill("#explorers", "\n".join(explorers))
    await page.fill("#pasted", format_headers_file(headers or {}))
    await page.evaluate("document.querySelector('details').open = true")  # where the regtest box sits
    await page.set_checked("#regtest", regtest)
    done = int(await page.evaluate("Number(document.body.dataset.done || 0)"))
    await page.set_input_files("#bundle", files=[{"name": "bundle.zip", "mimeType": "application/zip", "buffer": bundle}])
    await page.wait_for_selector(f'body[data-done="{done + 1}"]', state="attached")  # the page's CSP forbids eval
    report: dict[str, Any] = await page.evaluate("window.estampilleReport")
    return report
