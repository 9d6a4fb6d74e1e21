"""Drive relay/evidence/templates/verify.html in Debian's chromium (Playwright): hand it a bundle, read
back its report (``window.estampilleReport``, the same shape as ``estampille verify --json``'s
status and problem). For the page's tests and its benchmark."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from relay.anchor.headers import format_headers_file
from relay.evidence.bundle import VERIFY_PAGE_SOURCE as PAGE
from relay.evidence.ots_verify import block_hash

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
                       explorers: tuple[str, ...] = (), regtest: bool = True, max_delay_hours: float = 48
                       ) -> dict[str, Any]:
    """Give ``bundle`` to the page (headers pasted, or the explorers typed in) and return its report."""
    await page.fill("#explorers", "\n".join(explorers))
    await page.fill("#delay", str(max_delay_hours))
    await page.fill("#pasted", format_headers_file(headers or {}))
    await page.evaluate("document.querySelector('details').open = true")  # where the regtest box sits
    await page.set_checked("#regtest", regtest)
    done = int(await page.evaluate("Number(document.body.dataset.done || 0)"))
    await page.set_input_files("#bundle", files=[{"name": "bundle.zip", "mimeType": "application/zip", "buffer": bundle}])
    await page.wait_for_selector(f'body[data-done="{done + 1}"]', state="attached")  # the page's CSP forbids eval
    report: dict[str, Any] = await page.evaluate("window.estampilleReport")
    return report


@asynccontextmanager
async def explorers(headers: dict[int, bytes]) -> AsyncIterator[tuple[str, str]]:
    """Two Esplora-like APIs on loopback (two paths of one server) serving ``headers``; CORS
    allowed, as public explorers do, since the page runs from file://."""
    by_hash = {block_hash(raw): raw for raw in headers.values()}

    async def height(request: web.Request) -> web.Response:
        raw = headers.get(int(request.match_info["h"]))
        return web.Response(text=block_hash(raw)) if raw else web.Response(status=404)

    async def header(request: web.Request) -> web.Response:
        raw = by_hash.get(request.match_info["hash"])
        return web.Response(text=raw.hex()) if raw else web.Response(status=404)

    @web.middleware
    async def cors(request: web.Request, handler):  # type: ignore[no-untyped-def]
        response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    app = web.Application(middlewares=[cors])
    for name in ("one", "two"):
        app.router.add_get(f"/{name}/api/block-height/{{h}}", height)
        app.router.add_get(f"/{name}/api/block/{{hash}}/header", header)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/one/api", f"http://127.0.0.1:{port}/two/api"
    finally:
        await runner.cleanup()
