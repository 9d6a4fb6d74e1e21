"""End to end: a message to 3 recipients, one acknowledgment, anchoring on a local
calendar, the API's JSON, and the proof bundle verified offline with the database gone."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

import aiohttp
import aiosmtplib
import pytest

from relay import anchor, cli
from tests.support.calendar import EsploraFake, FakeCalendar, FakeChain
from tests.support.relay import relay_config, running
from tests.support.sink import Sink
from tracker.admin_auth import new_token

RECIPIENTS = ["alice@example.net", "bob@example.net", "carol@example.net"]
MESSAGE_ID = "<convocation-2026-12@mairie.example>"
SUBJECT = "Convocation au conseil municipal du 3 décembre"
DEADLINE = 20.0
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


def convocation() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mairie <convocations@mairie.example>"
    msg["To"] = ", ".join(RECIPIENTS)
    msg["Subject"] = SUBJECT
    msg["Message-ID"] = MESSAGE_ID
    msg.set_content("Mesdames et Messieurs les conseillers,\n\nvous êtes convoqués le 3 décembre à 18 h.\n")
    return msg.as_bytes()


async def until(check, what: str):
    deadline = time.monotonic() + DEADLINE
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return result


async def acknowledge(session: aiohttp.ClientSession, link: str) -> None:
    """What a person does: open the link, press the button."""
    async with session.get(link, headers={"User-Agent": BROWSER}) as r:
        page = await r.text()
    form_key = re.search(r'name="form_key" value="([0-9a-f]+)"', page).group(1)
    async with session.post(link, data={"form_key": form_key}, headers={"User-Agent": BROWSER},
                            allow_redirects=False) as r:
        assert r.status in (200, 303), await r.text()


def verify_cli(*argv: str) -> tuple[int, str]:
    """`estampille verify ...` in this process (a thread: it runs its own event loop)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["verify", *argv])
    return code, out.getvalue()


@pytest.fixture
async def chain_and_servers():
    chain = FakeChain()
    async with FakeCalendar(chain) as calendar, EsploraFake(chain) as e1, EsploraFake(chain) as e2:
        yield chain, calendar, (e1.url, e2.url)


async def test_message_to_three_recipients_proved_end_to_end(tmp_path, chain_and_servers):
    chain, calendar, explorers = chain_and_servers
    token, token_hash = new_token()
    data_dir = tmp_path / "data"
    out = tmp_path / "bundles"
    out.mkdir()
    async with Sink() as sink:
        config = relay_config(
            data_dir, sink.port,
            tracker={"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0,
                     "public_url": "http://127.0.0.1:1", "scanner_window": 0},
            anchor={"enabled": False, "calendars": [calendar.url], "min_calendars": 1},
            admin={"token_hashes": [token_hash]},
        )
        async with running(config) as service:
            base = f"http://127.0.0.1:{service.tracker.port}"
            await aiosmtplib.send(convocation(), sender="convocations@mairie.example", recipients=RECIPIENTS,
                                  hostname="127.0.0.1", port=service.smtp_port)
            got = await sink.wait_for(3)
            copy = next(m for m in got if m.rcpt_tos == ("bob@example.net",)).data
            path = re.search(rb"http://127\.0\.0\.1:1(/a/[A-Za-z0-9_-]+)", copy).group(1).decode()
            store = service.store
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as api:
                await acknowledge(api, base + path)
                await until(lambda: store.fetchone("SELECT 1 FROM receipts"), "the receipt")
                await until(lambda: store.fetchone("SELECT 1 FROM deliveries WHERE state = 'delivered'"
                                                   " GROUP BY submission_id HAVING COUNT(*) = 3"), "3 deliveries")
                await until(lambda: store.fetchone("SELECT 1 FROM fetches"), "the recorded fetch")

                await anchor.anchor_now(store, config.anchor)  # one batch, at the calendar: pending
                message_url = f"{base}/api/v1/messages/{quote(MESSAGE_ID, safe='')}"
                async with api.get(message_url + "/bundle") as r:
                    assert r.status == 200 and r.content_type == "application/zip"
                    (out / "pending.zip").write_bytes(await r.read())

                height = calendar.confirm()  # a block is mined
                await anchor.anchor_now(store, config.anchor)  # the upgrade grafts it
                async with api.get(message_url.replace("%3C", "").replace("%3E", "")) as r:
                    view = await r.json()
                async with api.get(message_url + "/bundle") as r:
                    (out / "bundle.zip").write_bytes(await r.read())

    # The API's JSON shows exactly what happened.
    assert view["message_id"] == MESSAGE_ID and view["subject"] == SUBJECT
    # Records: the submission, 3 deliveries, 3 hand-offs, Bob's fetch of the page and his acknowledgment.
    assert view["summary"] == {"recipients": 3, "delivered": 3, "acknowledged": 1, "records": 9, "anchored": 9}
    by_rcpt = {r["recipient"]: r for r in view["recipients"]}
    assert set(by_rcpt) == set(RECIPIENTS)
    for rcpt, r in by_rcpt.items():
        assert r["state"] == "delivered" and r["handoff"]["record"]["code"] == 250
        assert r["delivery"]["record"]["submission"] == view["submission"]["digest"]
        assert r["handoff"]["record"]["delivery"] == r["delivery"]["digest"]
        assert (r["acknowledgment"] is not None) == (rcpt == "bob@example.net")
        records = [r["delivery"], r["handoff"]] + ([r["acknowledgment"]] if r["acknowledgment"] else [])
        assert all(x["anchoring"]["state"] == "confirmed" and x["anchoring"]["bitcoin_height"] == height
                   for x in records)
    bob = by_rcpt["bob@example.net"]
    assert bob["acknowledgment"]["record"]["delivery"] == bob["delivery"]["digest"]
    assert [f["classification"] for f in bob["fetches"]] == ["person"]
    assert bob["fetches"][0]["record"]["anchoring"]["bitcoin_height"] == height
    assert view["submission"]["anchoring"]["bitcoin_height"] == height

    # The bundle verifies on its own: database gone, bundle copied to an empty directory.
    shutil.rmtree(data_dir)
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(out / "bundle.zip", alone / "bundle.zip")
    esplora = [arg for url in explorers for arg in ("--esplora", url)]
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "relay.cli", "verify", "bundle.zip", *esplora, "--regtest"],
        cwd=alone, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bob@example.net" in result.stdout and "VERIFIED" in result.stdout
    code, text = await asyncio.to_thread(verify_cli, str(alone / "bundle.zip"), *esplora, "--regtest", "--json")
    report = json.loads(text)
    assert code == 0 and report["status"] == "verified"
    assert [r["acknowledged_at"] is not None for r in report["recipients"]] == [
        r == "bob@example.net" for r in (x["recipient"] for x in report["recipients"])]
    assert {r["anchor"]["bitcoin_height"] for r in report["records"]} == {height}

    # Pending anchors: exit 1.
    code, text = await asyncio.to_thread(verify_cli, str(out / "pending.zip"), *esplora, "--regtest")
    assert code == 1, text

    # Any single changed byte of any file: exit 2, naming that file.
    with zipfile.ZipFile(alone / "bundle.zip") as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    assert len(files) == 3 + 1 + 3 + 9 * 2 + 2  # manifest, attestation, VERIFY; original; copies; records + .ots; keys
    for name, content in files.items():
        changed = alone / "changed.zip"
        with zipfile.ZipFile(changed, "w") as zf:
            for other, data in files.items():
                if other == name:
                    data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x20]) + data[len(data) // 2 + 1 :]
                zf.writestr(other, data)
        code, text = await asyncio.to_thread(verify_cli, str(changed), *esplora, "--regtest", "--json")
        report = json.loads(text)
        assert code == 2 and report["problem"]["file"] == name, (name, report["problem"])
