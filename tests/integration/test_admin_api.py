"""Admin access, the /api/v1 JSON API and the admin pages, over a real aiohttp server."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay.config import Config
from relay.store import Store
from tests.support.deliveries import make_delivery
from tests.support.openapi import assert_matches
from tracker.admin_auth import COOKIE, new_token
from tracker.app import make_app

T0 = 1_795_930_400.0
SUBJECT = "Convocation au conseil du 12 décembre"
RECIPIENT = "conseillere@example.net"


def admin_config(data_dir: Path, token_hash: str) -> Config:
    return Config.from_toml(
        f'data_dir = "{data_dir}"\n[tracker]\npublic_url = "https://accuse.commune.example"\nlanguage = "browser"\n'
        f'[admin]\ntoken_hashes = ["{token_hash}"]\n'
    )


@pytest.fixture
async def env(tmp_path):
    token, digest = new_token()
    store = await Store.open(tmp_path)
    made = await make_delivery(store, now=T0, subject=SUBJECT, recipient=RECIPIENT)
    row = await store.fetchone("SELECT message_id FROM submissions")
    app = make_app(admin_config(tmp_path, digest), store, clock=lambda: T0 + 60)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield {"client": client, "token": token, "message_id": row["message_id"], "app": app, "made": made}
    await client.close()
    await store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_api_without_or_with_a_wrong_token_is_401(env):
    c = env["client"]
    for headers in ({}, bearer("not-a-token"), {"Authorization": "Basic YWRtaW46YWRtaW4="}, bearer("")):
        r = await c.get("/api/v1/messages", headers=headers)
        assert r.status == 401, headers
        body = await r.json()
        assert body["error"] == "unauthorized" and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await c.get("/api/v1/messages", headers=bearer(env["token"]))
    assert r.status == 200


async def test_api_search_and_message_by_id_with_or_without_brackets(env):
    c, mid = env["client"], env["message_id"]
    r = await c.get("/api/v1/messages", params={"q": "conseillere@"}, headers=bearer(env["token"]))
    page = await r.json()
    assert page["total"] == 1 and page["messages"][0]["subject"] == SUBJECT
    assert page["messages"][0]["recipients"] == 1
    r = await c.get("/api/v1/messages", params={"q": "nobody-here"}, headers=bearer(env["token"]))
    assert (await r.json())["total"] == 0
    r = await c.get("/api/v1/messages", params={"since": "2999-01-01T00:00:00Z"}, headers=bearer(env["token"]))
    assert (await r.json())["total"] == 0
    for form in (mid, mid.strip("<>")):
        r = await c.get(f"/api/v1/messages/{quote(form, safe='')}", headers=bearer(env["token"]))
        assert r.status == 200, form
        body = await r.json()
        assert body["message_id"] == mid and body["subject"] == SUBJECT
        (rcpt,) = body["recipients"]
        assert rcpt["recipient"] == RECIPIENT and rcpt["acknowledgment"] is None
        assert rcpt["delivery"]["digest"] == env["made"].delivery_digest
        assert rcpt["delivery"]["anchoring"] == {"state": "queued"}
        assert body["submission"]["record"]["type"] == "submission"


async def test_api_errors_are_json(env):
    c = env["client"]
    r = await c.get(f"/api/v1/messages/{quote('<unknown@example.org>', safe='')}", headers=bearer(env["token"]))
    assert r.status == 404 and (await r.json())["error"] == "not_found"
    r = await c.get("/api/v1/messages", params={"page": "zero"}, headers=bearer(env["token"]))
    assert r.status == 400 and "page" in (await r.json())["message"]
    r = await c.get("/api/v1/nothing-here", headers=bearer(env["token"]))
    assert r.status == 404 and r.content_type == "application/json"


async def test_openapi_document_describes_the_api(env):
    r = await env["client"].get("/api/v1/openapi.json", headers=bearer(env["token"]))
    doc = await r.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) >= {"/api/v1/messages", "/api/v1/messages/{message_id}", "/api/v1/messages/{message_id}/bundle"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def guarded_requests(app, message_id: str) -> list[tuple[str, str]]:
    """Every (method, concrete path) the router serves under /admin and /api/v1, for a real message."""
    out = []
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:  # a sub-application (the admin pages, the API): its paths carry its prefix
            out += guarded_requests(info["app"], message_id)
            continue
        template = info.get("formatter") or info.get("path") or ""
        if not template.startswith(("/admin", "/api/v1")):
            continue
        path = template.replace("{message_id}", quote(message_id, safe=""))
        for route in resource:
            if route.method != "HEAD":
                out.append((route.method, path))
    return out


async def test_every_admin_route_refuses_without_credentials(env):
    c, app = env["client"], env["app"]
    requests = guarded_requests(app, env["message_id"])
    assert len(requests) >= 9  # the walk really found the API and the admin pages
    for cookie in (None, "forged-session-id"):
        for method, path in requests:
            headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
            r = await c.request(method, path, headers=headers, allow_redirects=False)
            text = await r.text()
            assert SUBJECT not in text and RECIPIENT not in text and env["message_id"] not in text, (method, path)
            if path == "/admin/login":
                assert r.status in (200, 401), (method, path)  # the form, or "token not recognised"
            elif path.startswith("/api/v1"):
                assert r.status == 401, (method, path)
            else:
                assert r.status == 303 and r.headers["Location"].endswith("/admin/login"), (method, path, r.status)


async def login(c: TestClient, token: str) -> tuple[str, SimpleCookie]:
    r = await c.post("/admin/login", data={"token": token}, allow_redirects=False)
    assert r.status == 303, await r.text()
    cookie = SimpleCookie(r.headers["Set-Cookie"])
    return cookie[COOKIE].value, cookie


async def test_login_sets_a_strict_httponly_secure_session(env):
    c = env["client"]
    r = await c.post("/admin/login", data={"token": "wrong"}, allow_redirects=False)
    assert r.status == 401 and "Set-Cookie" not in r.headers
    sid, cookie = await login(c, env["token"])
    morsel = cookie[COOKIE]
    assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Strict" and morsel["path"] == "/admin"
    assert sid != env["token"] and len(sid) >= 40
    r = await c.get("/admin/", headers={"Cookie": f"{COOKIE}={sid}"})
    page = await r.text()
    assert r.status == 200 and SUBJECT in page and 'lang="fr"' in page
    r = await c.get("/admin/", headers={"Cookie": f"{COOKIE}={sid}", "Accept-Language": "en"})
    assert "Recipients" in await r.text()
    r = await c.post("/admin/logout", headers={"Cookie": f"{COOKIE}={sid}"}, allow_redirects=False)
    assert r.status == 303
    r = await c.get("/admin/", headers={"Cookie": f"{COOKIE}={sid}"}, allow_redirects=False)
    assert r.status == 303  # the session is gone


async def test_message_page_and_unacknowledged_csv(env):
    c, mid = env["client"], env["message_id"]
    sid, _ = await login(c, env["token"])
    headers = {"Cookie": f"{COOKIE}={sid}"}
    r = await c.get(f"/admin/messages/{quote(mid, safe='')}", headers=headers)
    page = await r.text()
    assert r.status == 200 and RECIPIENT in page and "Accusés de réception : 0 sur 1" in page
    r = await c.get(f"/admin/messages/{quote(mid, safe='')}/unacknowledged.csv", headers=headers)
    assert r.status == 200 and r.content_type == "text/csv"
    lines = (await r.read()).decode("utf-8-sig").splitlines()
    assert lines[0] == "destinataire;état;dernière réponse;remis le;ouvertures du lien"
    assert lines[1].startswith(RECIPIENT)



async def test_answers_match_the_openapi_document(env):
    c, mid = env["client"], env["message_id"]
    r = await c.get("/api/v1/messages", headers=bearer(env["token"]))
    assert_matches("MessagePage", await r.json())
    r = await c.get(f"/api/v1/messages/{quote(mid, safe='')}", headers=bearer(env["token"]))
    assert_matches("Message", await r.json())
    r = await c.get("/api/v1/messages/%3Cnone%3E", headers=bearer(env["token"]))
    assert_matches("Error", await r.json())


async def test_admin_list_filters_by_day_in_the_tracker_time_zone(env):
    c = env["client"]
    sid, _ = await login(c, env["token"])
    headers = {"Cookie": f"{COOKIE}={sid}"}
    # T0 is 2026-11-29 06:33:20 in Paris: the 29th includes it (both ends inclusive), the 28th and the 30th do not.
    for since, until, found in (("2026-11-29", "2026-11-29", True), ("2026-11-30", "", False),
                                ("", "2026-11-28", False), ("", "", True)):
        r = await c.get("/admin/", params={"since": since, "until": until}, headers=headers)
        assert r.status == 200 and (SUBJECT in await r.text()) == found, (since, until)
    r = await c.get("/admin/", params={"since": "29/11/2026"}, headers=headers)
    assert r.status == 400


async def test_unknown_message_pages_are_404(env):
    c = env["client"]
    sid, _ = await login(c, env["token"])
    for suffix in ("", "/bundle", "/unacknowledged.csv"):
        r = await c.get(f"/admin/messages/%3Cnobody%40nowhere%3E{suffix}", headers={"Cookie": f"{COOKIE}={sid}"})
        assert r.status == 404, suffix


def test_timeline_says_whether_the_mail_server_took_or_refused_the_copy():
    from tracker.admin import TEXTS, timeline

    def handoff(code: int, text: str) -> dict:
        return {"record": {"handed_at": "2026-11-29T06:00:03Z", "code": code, "text": text},
                "anchoring": {"state": "queued"}}

    view = {"received_at": "2026-11-29T06:00:00Z", "submission": None}
    for code, words in ((250, "Remis au serveur"), (451, "Refusé pour l'instant"), (550, "Refusé définitivement")):
        r = {"delivery": None, "handoff": handoff(code, "x"), "last_reply": None, "fetches": [], "acknowledgment": None,
             "earlier_handoffs": [], "link_refusals": [], "link_disclosed": False}
        events = timeline(view, r, TEXTS["fr"], "Europe/Paris", "fr")
        assert events[-1]["what"].startswith(words) and events[-1]["detail"] == f"{code} x"
        assert events[-1]["when"] == "29/11/2026 07:00:03"  # Paris time, to the second
    r["earlier_handoffs"] = [handoff(451, "busy")]
    events = timeline(view, r, TEXTS["en"], "Europe/Paris", "en")
    assert [e["what"] for e in events[-2:]] == ["Refused for now by the mail server", "Refused for good by the mail server"]


async def test_a_member_opening_then_acknowledging_within_the_scanner_window_is_shown_as_theirs(env):
    """Before: 'Lien ouvert (probablement un filtre de sécurité)' just above the member's own acknowledgment."""
    c, made = env["client"], env["made"]
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"}
    await c.get(f"/a/{made.token}", headers={"User-Agent": "Mozilla/5.0 (Macintosh) Safari/605.1"})  # another client
    page = await (await c.get(f"/a/{made.token}", headers=browser)).text()  # 60 s after delivery: within 120 s
    form_key = re.search(r'name="form_key" value="([0-9a-f]+)"', page).group(1)
    r = await c.post(f"/a/{made.token}", data={"form_key": form_key}, headers=browser)
    assert r.status == 200
    sid, _ = await login(c, env["token"])
    r = await c.get(f"/admin/messages/{quote(env['message_id'], safe='')}", headers={"Cookie": f"{COOKIE}={sid}"})
    page = await r.text()
    assert page.count("Lien ouvert par le destinataire") == 1, page
    assert page.count("Lien ouvert (probablement un filtre de sécurité)") == 1  # the other client's fetch
