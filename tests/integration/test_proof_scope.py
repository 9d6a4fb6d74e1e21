"""Tokens are capabilities, and a Message-ID may name several messages: through the real relay,
a per-recipient bundle (API, admin pages, CLI) disables only that recipient's link; a link
taken from a bundle acknowledges nothing; every message sharing a Message-ID stays reachable."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from urllib.parse import quote

import aiohttp
import aiosmtplib

from relay import cli
from relay.evidence.archive import read_zip
from relay.evidence.bundle import FORMAT_VERSION
from tests.support.polling import until
from tests.support.proved import ACKNOWLEDGER, BROWSER, MESSAGE_ID, RECIPIENTS, convocation, proved_message

ALICE, CAROL = "alice@example.net", "carol@example.net"
LINK = re.compile(rb"http://127\.0\.0\.1:1(/a/[A-Za-z0-9_-]+)")


def cli_run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def copies(bundle: bytes) -> dict[str, bytes]:
    return {name: data for name, data in read_zip(bundle).items() if name.startswith("copies/")}


async def admin_session(base: str, token: str) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.CookieJar(unsafe=True))  # an IP host
    async with session.post("/admin/login", data={"token": token}, allow_redirects=False) as r:
        assert r.status == 303
    return session


async def test_a_per_recipient_bundle_carries_one_copy_and_disables_only_that_link(tmp_path):
    async with proved_message(tmp_path) as p:
        await p.anchor()
        await p.confirm()
        url = f"{p.base}/api/v1/messages/{quote(MESSAGE_ID, safe='')}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {p.token}"}) as api:
            async with api.get(url + "/bundle", params={"recipient": ALICE}) as r:
                assert r.status == 200 and "alice@example.net" in r.headers["Content-Disposition"]
                alice_bundle = await r.read()
            (only,) = copies(alice_bundle).values()
            manifest = json.loads(read_zip(alice_bundle)["manifest.json"])
            assert manifest["version"] == FORMAT_VERSION and manifest["facts"]["scope"] == ALICE
            alice_link = p.base + LINK.search(only).group(1).decode()
            # Carol's copy lives in the database: her link, not in the bundle, still works.
            carol_copy = await p.store.fetchone("SELECT copy_sha256 FROM deliveries WHERE recipient = ?", (CAROL,))
            carol_bytes = (await p.store.inline_bytes([carol_copy[0]]))[carol_copy[0]]
            carol_link = p.base + LINK.search(carol_bytes).group(1).decode()
            async with aiohttp.ClientSession() as member:
                async with member.get(alice_link, headers={"User-Agent": BROWSER}) as r:
                    assert r.status == 410 and "Lien désactivé" in await r.text()
                async with member.post(alice_link, data={"form_key": "0" * 64}, headers={"User-Agent": BROWSER}) as r:
                    assert r.status == 410
                async with member.get(carol_link, headers={"User-Agent": BROWSER}) as r:
                    assert r.status == 200 and 'name="form_key"' in await r.text()
            async with api.get(url) as r:
                view = await r.json()
            by = {x["recipient"]: x for x in view["recipients"]}
            assert by[ALICE]["link_disclosed"] and not by[CAROL]["link_disclosed"]
            assert [(x["method"], x["reason"]) for x in by[ALICE]["link_refusals"]] == [
                ("GET", "disclosed"), ("POST", "disclosed")]
            assert by[ALICE]["acknowledgment"] is None and view["summary"]["acknowledged"] == 1
            (disclosure,) = view["disclosures"]
            assert disclosure["scope"] == ALICE and disclosure["tokens"] == 1
            assert disclosure["digest"] == manifest["facts"]["disclosure"]

        # The bundle verifies, and says whose copy it carries.
        esplora = [arg for u in p.explorers for arg in ("--esplora", u)]
        (tmp_path / "alice.zip").write_bytes(alice_bundle)
        code, out, _ = await asyncio.to_thread(cli_run, "verify", str(tmp_path / "alice.zip"), *esplora, "--regtest",
                                               "--json")
        report = json.loads(out)
        assert code == 0 and report["scope"] == ALICE, report["problem"]
        assert {r["recipient"]: r["copy"] for r in report["recipients"]} == {
            ALICE: "checked", "bob@example.net": "withheld", CAROL: "withheld"}

        # The admin pages: a bundle per recipient, and the timeline says the link was disabled.
        admin = await admin_session(p.base, p.token)
        async with admin:
            async with admin.get(f"/admin/messages/{quote(MESSAGE_ID, safe='')}") as r:
                page = await r.text()
            assert r.status == 200 and "Lien désactivé : la copie figure dans un dossier de preuve" in page
            href = re.search(r'href="([^"]*/bundle\?[^"]*recipient=bob%40example\.net)"', page).group(1)
            async with admin.get(href.replace("&amp;", "&")) as r:
                assert r.status == 200
                assert list(copies(await r.read())) == ["copies/02-bob@example.net.eml"]

        # The CLI: Carol's bundle, which disables her link in turn.
        config = tmp_path / "estampille.toml"
        config.write_text(f'data_dir = "{p.data_dir}"\n')
        code, _, err = await asyncio.to_thread(cli_run, "proof", MESSAGE_ID, "--recipient", CAROL,
                                               "-o", str(tmp_path / "carol.zip"), "--config", str(config))
        assert code == 0, err
        assert list(copies((tmp_path / "carol.zip").read_bytes())) == ["copies/03-carol@example.net.eml"]
        async with aiohttp.ClientSession() as member, member.get(carol_link, headers={"User-Agent": BROWSER}) as r:
            assert r.status == 410
        records = await p.store.fetchall("SELECT body FROM records WHERE type = 'disclosure' ORDER BY created_at")
        assert [json.loads(r[0])["scope"] for r in records] == [ALICE, "bob@example.net", CAROL]


async def test_two_messages_with_one_message_id_are_both_reachable(tmp_path):
    async with proved_message(tmp_path) as p:
        # A second message reuses the Message-ID, from another sender.
        await aiosmtplib.send(convocation([CAROL]).replace(b"Mairie <convocations@", b"Autre <secretariat@"),
                              sender="secretariat@mairie.example", recipients=[CAROL], hostname="127.0.0.1",
                              port=p.service.smtp_port)
        await until(lambda: p.store.fetchone("SELECT 1 FROM deliveries WHERE state = 'delivered'"
                                             " GROUP BY NULL HAVING COUNT(*) = 4"), "second message delivered")
        url = f"{p.base}/api/v1/messages/{quote(MESSAGE_ID, safe='')}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {p.token}"}) as api:
            for path in ("", "/bundle"):
                async with api.get(url + path) as r:
                    assert r.status == 300
                    body = await r.json()
                assert body["error"] == "ambiguous"
                assert sorted(c["sender"] for c in body["choices"]) == [
                    "convocations@mairie.example", "secretariat@mairie.example"]
            views = {}
            for c in body["choices"]:
                async with api.get(f"{p.base}{c['href'].removesuffix('/bundle').replace('/bundle?', '?')}") as r:
                    assert r.status == 200
                    view = await r.json()
                views[view["sender"]] = view
                assert len(view["same_message_id"]) == 2 and view["submission_id"] == c["submission_id"]
            assert len(views["convocations@mairie.example"]["recipients"]) == len(RECIPIENTS)
            assert [x["recipient"] for x in views["secretariat@mairie.example"]["recipients"]] == [CAROL]
            async with api.get(f"{p.base}/api/v1/messages", params={"q": "convocation-2026-12"}) as r:
                listing = await r.json()
            assert {m["submission_id"] for m in listing["messages"]} == {v["submission_id"] for v in views.values()}

        admin = await admin_session(p.base, p.token)
        async with admin:
            async with admin.get(f"/admin/messages/{quote(MESSAGE_ID, safe='')}") as r:
                page = await r.text()
            assert r.status == 300 and "Plusieurs messages portent ce Message-ID" in page
            assert "convocations@mairie.example" in page and "secretariat@mairie.example" in page
            first = re.search(r'<td><a href="([^"]+)">', page).group(1).replace("&amp;", "&")
            async with admin.get(first) as r:
                shown = await r.text()
            assert r.status == 200 and "Autres messages portant ce Message-ID" in shown

        config = tmp_path / "estampille.toml"
        config.write_text(f'data_dir = "{p.data_dir}"\n')
        code, _, err = await asyncio.to_thread(cli_run, "proof", MESSAGE_ID, "-o", str(tmp_path / "x.zip"),
                                               "--config", str(config))
        assert code == 2 and "2 messages carry Message-ID" in err
        assert "secretariat@mairie.example" in err and "convocations@mairie.example" in err
        chosen = views["secretariat@mairie.example"]["submission_id"]
        code, _, err = await asyncio.to_thread(cli_run, "proof", MESSAGE_ID, "--submission", chosen,
                                               "-o", str(tmp_path / "x.zip"), "--config", str(config))
        assert code == 0, err
        assert list(copies((tmp_path / "x.zip").read_bytes())) == ["copies/01-carol@example.net.eml"]
        assert ACKNOWLEDGER not in json.loads(read_zip((tmp_path / "x.zip").read_bytes())["manifest.json"])["facts"][
            "recipients"][0]["recipient"]


async def test_the_database_holds_tokens_in_clear_only_inside_the_stored_copies(tmp_path):
    """What docs/acknowledgments.md says: outside the copies, only SHA-256 of tokens."""
    async with proved_message(tmp_path) as p:
        rows = await p.store.fetchall("SELECT data FROM message_bytes")
        found = {m.group(1).removeprefix(b"/a/").decode() for r in rows for m in LINK.finditer(r[0])}
        assert len(found) == len(RECIPIENTS)
        tables = [r[0] for r in await p.store.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            if table == "message_bytes":
                continue
            for row in await p.store.fetchall(f"SELECT * FROM {table}"):  # table names from the schema itself
                cells = [c.decode("latin-1") if isinstance(c, bytes) else str(c) for c in row]
                assert not any(t in c for t in found for c in cells), table
