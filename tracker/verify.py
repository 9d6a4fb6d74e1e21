"""``/verify``: the page that verifies a proof bundle in the visitor's browser.

The page is the file every bundle carries (relay/evidence/templates/verify.html): self-contained, it fetches nothing from the
tracker or elsewhere but the block explorers its user types in. It is served with its own
Content-Security-Policy (read from the page, so that the two never differ) instead of the
tracker's, which forbids scripts.
"""

from __future__ import annotations

import re

from aiohttp import web

from relay.evidence.bundle import VERIFY_PAGE_SOURCE as PAGE

CSP = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"', PAGE.read_text("utf-8")).group(1)  # type: ignore[union-attr]


async def show(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGE, headers={"Content-Security-Policy": CSP, "Content-Type": "text/html; charset=utf-8"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/verify", show)
