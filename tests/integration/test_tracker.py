"""The acknowledgment pages over a real aiohttp server on 127.0.0.1 (port 0).

Deliveries and tokens are made directly in the store (tests/support/deliveries.py);
the clock is a test clock, so the scanner window and the retention are exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import os
import re
import stat
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay.config import Config
from relay.errors import StoreError
from relay.evidence.records import Record, commitment, disclosure_record, iso_time, receipt_record
from relay.ops.retention import purge
from relay.store import DB_NAME, FetchWrite, PersonalData, Store, tokens
from tests.support.deliveries import make_delivery
from tests.support.polling import until
from tracker import antiforgery, recorder
from tracker.app import make_app

T0 = 1_795_930_400.0  # 2026-11-29T05:33:20Z; fixed so pages and windows are exact
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
HEADLESS = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0 Safari/537.36"
LATER = 600  # seconds after delivery: past the 120 s scanner window


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_config(data_dir: Path, **tracker: object) -> Config:
    settings = {
        "trusted_proxies": ["127.0.0.1/32"],
        "scanner_networks": ["198.51.100.0/24"],
        "public_url": "https://accuse.commune.example",
        **tracker,
    }
    lines = [f'data_dir = "{data_dir}"', "[tracker]"]
    for key, value in settings.items():
        lines.append(f"{key} = {value!r}".replace("'", '"') if not isinstance(value, list)
                     else f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
    return Config.from_toml("\n".join(lines))


class Env:
    """A store, a tracker client and the test clock."""

    def __init__(self, store: Store, client: TestClient, clock: Clock, config: Config) -> None:
        self.store, self.client, self.clock, self.config = store, client, clock, config

    async def count(self, table: str) -> int:
        return (await self.store.fetchone(f"SELECT COUNT(*) FROM {table}"))[0]

    async def fetches_recorded(self, count: int) -> None:
        """Wait for ``count`` fetches on disk: a page is answered before its fetch is written."""
        await until(lambda: self.store.fetchone("SELECT 1 FROM fetches GROUP BY NULL HAVING COUNT(*) = ?", (count,)),
                    f"{count} fetches recorded")

    async def form_key(self, token: str, **headers: str) -> str:
        response = await self.client.get(f"/a/{token}", headers={"User-Agent": BROWSER, **headers})
        assert response.status == 200
        return re.search(r'name="form_key" value="([0-9a-f]+)"', await response.text()).group(1)


async def start(tmp_path: Path, **tracker: object):
    config = make_config(tmp_path / "data", **tracker)
    store = await Store.open(config.data_path)
    clock = Clock(T0)
    client = TestClient(TestServer(make_app(config, store, clock=clock), host="127.0.0.1"))
    await client.start_server()
    return Env(store, client, clock, config)


@pytest.fixture
async def env(tmp_path: Path):
    e = await start(tmp_path)
    yield e
    await e.client.close()
    await e.store.close()


def page_text(body: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


async def test_get_shows_the_message_and_records_a_person_fetch_without_acknowledging(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)
    env.clock.now = T0 + LATER
    response = await env.client.get(f"/a/{made.token}", headers={"User-Agent": BROWSER})
    assert response.status == 200
    text = page_text(await response.text())
    assert "mairie@commune.example" in text
    assert "Convocation au conseil municipal du 12 décembre" in text
    assert "elu@example.net" in text
    # T0 is 2026-11-29 05:33:20 UTC: 06:33 in Paris (UTC+1 in winter).
    assert "dimanche 29 novembre 2026 à 06:33 (Europe/Paris)" in text
    assert "J'accuse réception" in text
    await env.fetches_recorded(1)
    assert await env.count("receipts") == 0
    fetch = await env.store.fetchone("SELECT method, classification, reason FROM fetches")
    assert (fetch["method"], fetch["classification"]) == ("GET", "person")


@pytest.mark.parametrize(
    ("method", "user_agent", "forwarded", "delay", "reason"),
    [
        ("HEAD", BROWSER, None, LATER, "HEAD request"),
        ("GET", HEADLESS, None, LATER, "automated user agent (headless)"),
        ("GET", "", None, LATER, "empty user agent"),
        ("GET", BROWSER, None, 30, "30 s after delivery (window 120 s)"),
        ("GET", BROWSER, "198.51.100.7", LATER, "from scanner network 198.51.100.0/24"),
    ],
)
async def test_scanner_like_fetches_are_classified_and_never_acknowledge(
    env: Env, method: str, user_agent: str, forwarded: str | None, delay: int, reason: str
) -> None:
    made = await make_delivery(env.store, now=T0)
    env.clock.now = T0 + delay
    headers = {"User-Agent": user_agent}
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    response = await env.client.request(method, f"/a/{made.token}", headers=headers)
    assert response.status == 200
    body = await response.read()
    assert (body == b"") if method == "HEAD" else (b"form_key" in body)
    await env.fetches_recorded(1)
    fetch = await env.store.fetchone("SELECT method, classification, reason FROM fetches")
    assert (fetch["method"], fetch["classification"], fetch["reason"]) == (method, "scanner", reason)
    assert await env.count("receipts") == 0
    record = await env.store.get_record(
        (await env.store.fetchone("SELECT record_digest FROM fetches"))["record_digest"]
    )
    assert record.fields["kind"] == "fetched" and record.fields["delivery"] == made.delivery_digest


# A non-ASCII value gave a 500 with a traceback (hmac.compare_digest refuses non-ASCII text).
@pytest.mark.parametrize("form", [{}, {"form_key": "0" * 64}, {"form_key": ""}, {"form_key": "é" * 64}])
async def test_post_without_the_right_anti_forgery_value_is_refused_and_records_nothing(
    env: Env, form: dict[str, str]
) -> None:
    made = await make_delivery(env.store, now=T0)
    other = await make_delivery(env.store, now=T0, recipient="autre@example.net")
    env.clock.now = T0 + LATER
    await env.form_key(made.token)
    another = form.get("form_key") == "0" * 64
    if another:
        form = {"form_key": await env.form_key(other.token)}  # a real value, for another token
    await env.fetches_recorded(2 if another else 1)
    before = [await env.count(t) for t in ("records", "anchor_leaves", "personal", "receipts")]
    response = await env.client.post(f"/a/{made.token}", data=form, headers={"User-Agent": BROWSER})
    assert response.status == 403
    assert "Demande refusée" in page_text(await response.text())
    assert [await env.count(t) for t in ("records", "anchor_leaves", "personal", "receipts")] == before


async def test_first_post_records_one_anchored_receipt_and_later_ones_nothing(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)
    env.clock.now = T0 + LATER
    key = await env.form_key(made.token)
    response = await env.client.post(f"/a/{made.token}", data={"form_key": key}, headers={"User-Agent": BROWSER})
    assert response.status == 200
    text = page_text(await response.text())
    assert "Votre accusé de réception a été enregistré le dimanche 29 novembre 2026 à 06:43 (Europe/Paris)" in text
    receipt = await env.store.fetchone("SELECT * FROM receipts")
    assert receipt["delivery_id"] == made.delivery_id and receipt["at"] == T0 + LATER
    record = await env.store.get_record(receipt["record_digest"])
    assert record.fields["kind"] == "acknowledged" and record.fields["delivery"] == made.delivery_digest
    assert record.fields["at"] == "2026-11-29T05:43:20.000000Z"
    assert await env.store.fetchone("SELECT 1 FROM anchor_leaves WHERE digest = ?", (record.digest,))

    counts = [await env.count(t) for t in ("records", "anchor_leaves", "receipts", "personal")]
    env.clock.now = T0 + LATER + 3600
    again = await env.client.post(f"/a/{made.token}", data={"form_key": key}, headers={"User-Agent": BROWSER})
    assert again.status == 200
    assert "Vous avez déjà accusé réception de ce message le dimanche 29 novembre 2026 à 06:43" in page_text(
        await again.text()
    )
    assert [await env.count(t) for t in ("records", "anchor_leaves", "receipts", "personal")] == counts


async def test_concurrent_posts_record_exactly_one_receipt(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)
    env.clock.now = T0 + LATER
    key = await env.form_key(made.token)
    responses = await asyncio.gather(
        *(env.client.post(f"/a/{made.token}", data={"form_key": key}) for _ in range(20))
    )
    texts = [page_text(await r.text()) for r in responses]
    assert all(r.status == 200 for r in responses)
    assert sum("a été enregistré" in t for t in texts) == 1
    assert await env.count("receipts") == 1
    assert (await env.store.fetchone("SELECT COUNT(*) FROM records WHERE type = 'receipt' AND CAST(body AS TEXT) LIKE ?",
                                     ('%"acknowledged"%',)))[0] == 1


async def test_rewritten_link_leads_on_to_the_exact_original_url(env: Env) -> None:
    original = "https://docs.commune.example/seance?id=42&ordre=1&x=%2F(a)#point-3"
    made = await make_delivery(env.store, now=T0, target_url=original)
    env.clock.now = T0 + LATER
    page = await env.client.get(f"/a/{made.token}", headers={"User-Agent": BROWSER})
    assert "form-action 'self' https://docs.commune.example" in page.headers["Content-Security-Policy"]
    key = re.search(r'name="form_key" value="([0-9a-f]+)"', await page.text()).group(1)
    for _ in range(2):  # the first records the receipt, the second only leads on
        response = await env.client.post(f"/a/{made.token}", data={"form_key": key}, allow_redirects=False)
        assert response.status == 303
        assert response.headers["Location"] == original
    assert await env.count("receipts") == 1
    other = await make_delivery(env.store, now=T0)  # a page that leads nowhere keeps the strict policy
    plain = await env.client.get(f"/a/{other.token}", headers={"User-Agent": BROWSER})
    assert "form-action 'self';" in plain.headers["Content-Security-Policy"] + ";"
    assert "docs.commune.example" not in plain.headers["Content-Security-Policy"]


async def test_unknown_and_malformed_tokens_get_identical_404s(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)
    env.clock.now = T0 + LATER
    paths = ["/a/" + "A" * 22, "/a/not*a*token", "/a/%3Cscript%3E", "/a/", f"/a/{made.token[:-1]}"]
    responses = [await env.client.get(p, headers={"User-Agent": BROWSER}) for p in paths]
    bodies = [await r.read() for r in responses]
    assert [r.status for r in responses] == [404] * len(paths)
    assert len(set(bodies)) == 1 and b"Lien introuvable" in bodies[0]
    headers = [{k: v for k, v in r.headers.items() if k != "Date"} for r in responses]
    assert all(h == headers[0] for h in headers)
    post = await env.client.post(f"/a/{made.token[:-1]}", data={"form_key": "x"})
    assert post.status == 404 and await post.read() == bodies[0]
    assert await env.count("fetches") == 0


async def test_an_expired_token_is_refused_with_a_page_that_says_so_and_the_refusal_recorded(env: Env) -> None:
    """tracker.token_ttl_days (60 by default) counts from the delivery."""
    made = await make_delivery(env.store, now=T0)
    assert env.config.tracker.token_ttl_days == 60
    env.clock.now = T0 + 60 * 86400 - 1
    form_key = await env.form_key(made.token)  # still valid: the page shows, its fetch is recorded
    env.clock.now = T0 + 60 * 86400
    page = await env.client.get(f"/a/{made.token}", headers={"User-Agent": BROWSER})
    assert page.status == 410 and "Lien expiré" in page_text(await page.text())
    post = await env.client.post(f"/a/{made.token}", data={"form_key": form_key}, headers={"User-Agent": BROWSER})
    assert post.status == 410 and "Lien expiré" in page_text(await post.text())  # tracker.language: French
    assert await env.count("receipts") == 0
    refusals = await env.store.fetchall("SELECT delivery_id, method, reason, at FROM token_refusals ORDER BY id")
    assert [tuple(r) for r in refusals] == [(made.delivery_id, "GET", "expired", env.clock.now),
                                            (made.delivery_id, "POST", "expired", env.clock.now)]
    await env.fetches_recorded(1)  # the fetch before expiry only


async def test_a_disclosed_token_is_refused_and_acknowledges_nothing(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)
    other = await make_delivery(env.store, now=T0, recipient="autre@example.net")
    env.clock.now = T0 + LATER
    form_key = await env.form_key(made.token)
    token_sha256 = hashlib.sha256(made.token.encode()).hexdigest()
    record = disclosure_record(submission_digest="00" * 32, deliveries=[made.delivery_digest],
                               token_sha256s=[token_sha256], scope=None, at=iso_time(env.clock.now))
    submission = (await env.store.fetchone("SELECT submission_id FROM deliveries WHERE id = ?",
                                           (made.delivery_id,)))[0]
    await tokens.record_disclosure(env.store, record, submission_id=submission, token_sha256s=[token_sha256],
                                   now=env.clock.now)
    post = await env.client.post(f"/a/{made.token}", data={"form_key": form_key}, headers={"User-Agent": BROWSER})
    assert post.status == 410 and "Lien désactivé" in page_text(await post.text())
    assert await env.count("receipts") == 0
    assert [tuple(r) for r in await env.store.fetchall("SELECT method, reason FROM token_refusals")] == [
        ("POST", "disclosed")]
    # The disclosure is an evidence record, queued for anchoring like every record.
    assert (await env.store.get_record(record.digest)).type == "disclosure"
    assert await env.store.fetchone("SELECT 1 FROM anchor_leaves WHERE digest = ?", (record.digest,))
    # Another member's link still works.
    other_key = await env.form_key(other.token)
    done = await env.client.post(f"/a/{other.token}", data={"form_key": other_key}, headers={"User-Agent": BROWSER})
    assert done.status == 200 and await env.count("receipts") == 1


async def test_misses_are_rate_limited_per_client_address(tmp_path: Path) -> None:
    env = await start(tmp_path, miss_limit_per_minute=3)
    try:
        made = await make_delivery(env.store, now=T0)
        env.clock.now = T0 + LATER
        me = {"X-Forwarded-For": "203.0.113.5", "User-Agent": BROWSER}
        statuses = [(await env.client.get(f"/a/{'B' * 22}{n}", headers=me)).status for n in range(4)]
        assert statuses == [404, 404, 404, 429]
        blocked = await env.client.get(f"/a/{'B' * 22}", headers=me)
        assert blocked.headers["Retry-After"] == "60" and "Trop de tentatives" in page_text(await blocked.text())
        # Blocked even for a real token (a guess that hits learns nothing), but not others.
        assert (await env.client.get(f"/a/{made.token}", headers=me)).status == 429
        other = {"X-Forwarded-For": "203.0.113.6", "User-Agent": BROWSER}
        assert (await env.client.get(f"/a/{made.token}", headers=other)).status == 200
        # X-Forwarded-For is only believed from a trusted proxy: the chain's client is 203.0.113.5.
        assert (await env.client.get(f"/a/{'C' * 22}", headers={"X-Forwarded-For": "10.9.9.9, 203.0.113.5"})).status == 429
        env.clock.now += 61
        assert (await env.client.get(f"/a/{made.token}", headers=me)).status == 200
    finally:
        await env.client.close()
        await env.store.close()


async def test_misses_of_an_ipv6_slash64_count_as_one_client(tmp_path: Path) -> None:
    """A client holding a /64 gets no fresh allowance by moving to another of its addresses."""
    env = await start(tmp_path, miss_limit_per_minute=3)
    try:
        made = await make_delivery(env.store, now=T0)
        env.clock.now = T0 + LATER
        statuses = [(await env.client.get(f"/a/{'B' * 22}{n}", headers={
            "X-Forwarded-For": f"2001:db8:5:6::{n + 1:x}", "User-Agent": BROWSER})).status for n in range(4)]
        assert statuses == [404, 404, 404, 429]
        next_door = {"X-Forwarded-For": "2001:db8:5:7::1", "User-Agent": BROWSER}
        assert (await env.client.get(f"/a/{made.token}", headers=next_door)).status == 200
    finally:
        await env.client.close()
        await env.store.close()


async def test_forwarded_for_is_ignored_from_untrusted_peers(tmp_path: Path) -> None:
    env = await start(tmp_path, trusted_proxies=[], scanner_networks=["198.51.100.0/24"])
    try:
        made = await make_delivery(env.store, now=T0)
        env.clock.now = T0 + LATER
        headers = {"User-Agent": BROWSER, "X-Forwarded-For": "198.51.100.7"}
        assert (await env.client.get(f"/a/{made.token}", headers=headers)).status == 200
        await env.fetches_recorded(1)
        fetch = await env.store.fetchone("SELECT classification FROM fetches")
        assert fetch["classification"] == "person"
        assert (await env.store.fetchone("SELECT ip FROM personal"))["ip"] == "127.0.0.1"
    finally:
        await env.client.close()
        await env.store.close()


async def test_a_subject_with_markup_is_shown_as_text(env: Env) -> None:
    made = await make_delivery(env.store, now=T0, subject='<script>alert("x")</script><b>Ordre</b>')
    response = await env.client.get(f"/a/{made.token}", headers={"User-Agent": BROWSER})
    body = await response.text()
    assert "<script" not in body and "<b>" not in body
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b&gt;Ordre&lt;/b&gt;" in body


async def test_the_authoritys_language_whatever_the_browser_says(env: Env) -> None:
    """Before: an English-language browser, or a scanner's headless one, got English from a French authority."""
    made = await make_delivery(env.store, now=T0)
    for header in ("en", "en-GB,en;q=0.9", None):
        response = await env.client.get(f"/a/{made.token}", headers={"Accept-Language": header} if header else {})
        assert '<html lang="fr">' in await response.text(), header
    english = await start(env.config.data_path.parent / "en", language="en")
    try:
        made = await make_delivery(english.store, now=T0)
        response = await english.client.get(f"/a/{made.token}", headers={"Accept-Language": "fr-FR"})
        assert '<html lang="en">' in await response.text()
    finally:
        await english.client.close()
        await english.store.close()


async def test_french_by_default_english_by_accept_language_when_configured(tmp_path: Path) -> None:
    env = await start(tmp_path, language="browser")
    try:
        await _french_by_default_english_by_accept_language(env)
    finally:
        await env.client.close()
        await env.store.close()


async def _french_by_default_english_by_accept_language(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)
    french = await env.client.get(f"/a/{made.token}", headers={"User-Agent": BROWSER})
    body = await french.text()
    assert '<html lang="fr">' in body and "J'accuse réception" in page_text(body)
    assert french.headers["Vary"] == "Accept-Language"
    for header in ("en", "en-GB,en;q=0.9", "de-DE, en;q=0.5, fr;q=0.3"):
        english = await env.client.get(f"/a/{made.token}", headers={"Accept-Language": header})
        body = await english.text()
        assert '<html lang="en">' in body, header
        assert "I acknowledge receipt" in body and "Sunday 29 November 2026 at 06:33 (Europe/Paris)" in body
    fr_first = await env.client.get(f"/a/{made.token}", headers={"Accept-Language": "fr-FR,en;q=0.8"})
    assert '<html lang="fr">' in await fr_first.text()
    missing = await env.client.get("/a/nope", headers={"Accept-Language": "en"})
    assert "Link not found" in await missing.text()


async def test_security_headers_health_and_stylesheet(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)
    page = await env.client.get(f"/a/{made.token}")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # default-src 'none' forbids scripts
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Server"] == "Estampille"  # no software versions for a scanner to match
    body = await page.text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in body
    assert not re.search(r'(src|href)="(https?:)?//', body)  # nothing external
    assert "<script" not in body
    css_href = re.search(r'<link rel="stylesheet" href="([^"]+)"', body).group(1)
    css = await env.client.get(css_href)
    assert css.status == 200 and css.content_type == "text/css" and ":focus-visible" in await css.text()
    health = await env.client.get("/healthz")
    assert health.status == 200 and await health.text() == "ok\n"
    assert health.headers["X-Frame-Options"] == "DENY"
    wrong = await env.client.put(f"/a/{made.token}")
    assert wrong.status == 405 and "POST" in wrong.headers["Allow"]


async def test_anti_forgery_secret_is_private_and_stable(env: Env) -> None:
    path = env.config.data_path / antiforgery.SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert antiforgery.load_secret(env.config.data_path) == path.read_bytes()


async def test_after_the_retention_purge_the_receipt_verifies_and_no_raw_ip_or_agent_remains(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)
    env.clock.now = T0 + LATER
    agent = "Mozilla/5.0 (Android 14; Mobile) Firefox/133.0 PurgeCheck/7"
    who = {"User-Agent": agent, "X-Forwarded-For": "203.0.113.77"}
    key = await env.form_key(made.token, **who)
    assert (await env.client.post(f"/a/{made.token}", data={"form_key": key}, headers=who)).status == 200
    receipt = await env.store.fetchone("SELECT * FROM receipts")
    stored = await env.store.fetchone("SELECT body FROM records WHERE digest = ?", (receipt["record_digest"],))
    assert b"203.0.113.77" not in stored["body"] and agent.encode() not in stored["body"]
    assert await env.count("personal") == 2  # the fetch's and the receipt's

    summary = await purge(env.store, env.config, now=T0 + LATER + 366 * 86400)
    assert summary.personal_rows == 2

    assert await env.count("personal") == 0
    for name in (DB_NAME, DB_NAME + "-wal"):  # nor in free pages or the write-ahead log
        path = env.store.data_dir / name
        raw = path.read_bytes() if path.exists() else b""
        assert b"203.0.113.77" not in raw and b"PurgeCheck" not in raw, name
    for table in ("submissions", "deliveries", "records", "ack_tokens", "fetches", "receipts", "anchor_leaves"):
        for row in await env.store.fetchall(f"SELECT * FROM {table}"):
            for value in tuple(row):
                raw = value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else b""
                assert b"203.0.113.77" not in raw and b"PurgeCheck" not in raw, table
    after = await env.store.fetchone("SELECT * FROM receipts")
    assert after["record_digest"] == receipt["record_digest"] and after["personal_id"] is None
    row = await env.store.fetchone("SELECT body FROM records WHERE digest = ?", (receipt["record_digest"],))
    assert row["body"] == stored["body"]
    assert hashlib.sha256(row["body"]).hexdigest() == receipt["record_digest"]
    assert Record.from_bytes(row["body"]).digest == receipt["record_digest"]
    assert await env.store.fetchone("SELECT 1 FROM anchor_leaves WHERE digest = ?", (receipt["record_digest"],))


async def test_recent_personal_data_survives_the_purge(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)
    await env.client.get(f"/a/{made.token}", headers={"User-Agent": BROWSER})
    await env.fetches_recorded(1)
    summary = await purge(env.store, env.config, now=T0 + 364 * 86400)
    assert summary.personal_rows == 0 and await env.count("personal") == 1


# -- fetches are written in groups, off the request path (tracker/recorder.py) -----------------

async def test_a_page_is_answered_while_the_database_is_busy_and_its_fetch_written_after(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)
    async with env.store.transaction():  # another writer holds the database meanwhile
        page = await asyncio.wait_for(env.client.get(f"/a/{made.token}", headers={"User-Agent": BROWSER}), 20)
        assert page.status == 200
        assert await env.count("fetches") == 0
    await env.fetches_recorded(1)


async def test_queued_fetches_are_written_by_count_with_a_receipt_and_at_a_graceful_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder, "FETCH_FLUSH_SECONDS", 3600.0)  # only the other triggers write
    monkeypatch.setattr(recorder, "FETCH_FLUSH_COUNT", 3)
    env = await start(tmp_path)
    try:
        made = await make_delivery(env.store, now=T0)
        env.clock.now = T0 + LATER
        page = f"/a/{made.token}"
        for _ in range(2):
            assert (await env.client.get(page, headers={"User-Agent": BROWSER})).status == 200
        assert await env.count("fetches") == 0  # two wait in memory
        await env.client.get(page, headers={"User-Agent": BROWSER})
        await env.fetches_recorded(3)  # the third starts the commit
        key = await env.form_key(made.token)
        assert (await env.client.post(page, data={"form_key": key})).status == 200
        assert (await env.count("fetches"), await env.count("receipts")) == (4, 1)  # written with the receipt
        for _ in range(2):
            await env.client.get(page, headers={"User-Agent": BROWSER})
        assert await env.count("fetches") == 4
    finally:
        await env.client.close()  # stops the application: what waits is written
    try:
        assert await env.count("fetches") == 6
        assert await env.count("personal") == 7  # and each event's record is queued for anchoring:
        anchored = await env.store.fetchone(
            "SELECT COUNT(*) FROM anchor_leaves JOIN records USING (digest) WHERE records.type = 'receipt'")
        assert anchored[0] == 7
    finally:
        await env.store.close()


async def test_a_full_fetch_queue_holds_requests_until_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder, "MAX_PENDING_FETCHES", 3)
    env = await start(tmp_path)
    try:
        made = await make_delivery(env.store, now=T0)
        async with env.store.transaction():  # the disk is stalled: nothing can be written
            gets = [asyncio.ensure_future(env.client.get(f"/a/{made.token}")) for _ in range(9)]
            await until(lambda: sum(g.done() for g in gets) >= 3, "three pages answered")
            await asyncio.sleep(0.3)
            # 3 wait in memory, and at most 3 more in the commit that is stalled; the rest wait for room.
            assert 3 <= sum(g.done() for g in gets) <= 6
        responses = await asyncio.gather(*gets)
        assert [r.status for r in responses] == [200] * 9
        await env.fetches_recorded(9)
    finally:
        await env.client.close()
        await env.store.close()


async def test_a_failed_fetch_write_is_tried_once_more_then_given_up_with_an_error_logged(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    made = await make_delivery(env.store, now=T0)
    write = env.store.write_tracker_events
    failures = [StoreError("disk I/O error")]

    async def flaky(fetches, receipts):
        if failures:
            raise failures.pop()
        return await write(fetches, receipts)

    monkeypatch.setattr(env.store, "write_tracker_events", flaky)
    assert (await env.client.get(f"/a/{made.token}", headers={"User-Agent": BROWSER})).status == 200
    await env.fetches_recorded(1)  # the second attempt wrote it

    failures.extend([StoreError("disk I/O error")] * 2)
    assert (await env.client.get(f"/a/{made.token}", headers={"User-Agent": BROWSER})).status == 200
    await until(lambda: "1 page fetches not recorded" in caplog.text, "the lost fetch logged")
    assert await env.count("fetches") == 1
    assert (await env.client.get(f"/a/{made.token}", headers={"User-Agent": BROWSER})).status == 200
    await env.fetches_recorded(2)  # and the recorder goes on


async def test_a_failed_tracker_write_leaves_nothing_behind_and_the_store_usable(env: Env) -> None:
    made = await make_delivery(env.store, now=T0)

    def fetch(delivery_id: int, salt: bytes) -> FetchWrite:
        record = receipt_record(delivery_digest=made.delivery_digest, kind="fetched", at=iso_time(T0),
                                ip_commitment=commitment(salt, "192.0.2.1"), user_agent_commitment=commitment(salt, ""))
        return FetchWrite(delivery_id, T0, "GET", "scanner", "test", PersonalData(salt, "192.0.2.1", ""), record)

    tables = ("personal", "records", "anchor_leaves", "fetches")
    before = [await env.count(t) for t in tables]
    with pytest.raises(StoreError):  # the second names no delivery: the fetches row breaks a foreign key
        await env.store.write_tracker_events([fetch(made.delivery_id, b"a" * 16), fetch(10**9, b"b" * 16)], [])
    assert [await env.count(t) for t in tables] == before
    await env.store.write_tracker_events([fetch(made.delivery_id, b"c" * 16)], [])
    assert [await env.count(t) for t in tables] == [n + 1 for n in before]
