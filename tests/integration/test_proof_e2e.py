"""End to end: a message to 3 recipients, one acknowledgment, anchoring on a local
calendar, the API's JSON, and the proof bundle verified offline with the database gone."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiohttp

from relay import cli
from tests.support.openapi import assert_matches
from tests.support.proved import ACKNOWLEDGER, MESSAGE_ID, RECIPIENTS, SUBJECT, proved_message


def anchorings(view: dict) -> list[dict]:
    """The anchoring of every record in the API's view of a message."""
    out = [view["submission"]["anchoring"]]
    for r in view["recipients"]:
        records = [r["delivery"], r["handoff"], r["acknowledgment"], *r["earlier_handoffs"]]
        out += [x["anchoring"] for x in records if x is not None]
        out += [f["record"]["anchoring"] for f in r["fetches"]]
    return out


def verify_cli(*argv: str) -> tuple[int, str]:
    """`estampille verify ...` in this process (call it in a thread: it runs its own event loop)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["verify", *argv])
    return code, out.getvalue()


async def test_message_to_three_recipients_proved_end_to_end(tmp_path):
    out = tmp_path / "bundles"
    out.mkdir()
    async with proved_message(tmp_path) as p:
        message_url = f"{p.base}/api/v1/messages/{quote(MESSAGE_ID, safe='')}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {p.token}"}) as api:
            await p.anchor()  # one batch, at the calendar: pending
            async with api.get(message_url) as r:
                pending = await r.json()
            states = [pending["submission"]["anchoring"]] + [
                x["anchoring"] for r in pending["recipients"] for x in (r["delivery"], r["handoff"])]
            assert all(a == {"state": "pending", "calendars": [p.calendar.url]} for a in states), states
            async with api.get(message_url + "/bundle") as r:
                assert r.status == 200 and r.content_type == "application/zip"
                (out / "pending.zip").write_bytes(await r.read())
            height = await p.confirm()  # a block is mined, the upgrade grafts it
            async with api.get(message_url.replace("%3C", "").replace("%3E", "")) as r:  # without brackets
                view = await r.json()
            async with api.get(message_url + "/bundle") as r:
                (out / "bundle.zip").write_bytes(await r.read())
        # `estampille proof` makes the same bundle from the command line.
        config_file = tmp_path / "estampille.toml"
        config_file.write_text(f'data_dir = "{p.data_dir}"\n')
        code = await asyncio.to_thread(
            cli.main, ["proof", MESSAGE_ID.strip("<>"), "-o", str(out / "cli.zip"), "--config", str(config_file)])
        with zipfile.ZipFile(out / "cli.zip") as a, zipfile.ZipFile(out / "bundle.zip") as b:
            assert code == 0 and sorted(a.namelist()) == sorted(b.namelist())
            assert all(a.read(n) == b.read(n) for n in a.namelist() if n.startswith(("records/", "copies/", "keys/")))
        explorers, data_dir = p.explorers, p.data_dir

        # The API's JSON shows exactly what happened.
        assert_matches("Message", view)
        assert view["message_id"] == MESSAGE_ID and view["subject"] == SUBJECT
        # Records: the submission, 3 deliveries, 3 hand-offs, Bob's fetch of the page and his acknowledgment.
        assert view["summary"] == {"recipients": 3, "delivered": 3, "acknowledged": 1, "records": 9, "anchored": 9}
        by_rcpt = {r["recipient"]: r for r in view["recipients"]}
        assert set(by_rcpt) == set(RECIPIENTS)
        for rcpt, r in by_rcpt.items():
            assert r["state"] == "delivered" and r["handoff"]["record"]["code"] == 250
            assert r["delivery"]["record"]["submission"] == view["submission"]["digest"]
            assert r["handoff"]["record"]["delivery"] == r["delivery"]["digest"]
            assert (r["acknowledgment"] is not None) == (rcpt == ACKNOWLEDGER)
            records = [r["delivery"], r["handoff"]] + ([r["acknowledgment"]] if r["acknowledgment"] else [])
            assert all(x["anchoring"]["state"] == "confirmed" and x["anchoring"]["bitcoin_height"] == height
                       for x in records)
        bob = by_rcpt[ACKNOWLEDGER]
        assert bob["acknowledgment"]["record"]["delivery"] == bob["delivery"]["digest"]
        assert [f["classification"] for f in bob["fetches"]] == ["person"]
        assert bob["fetches"][0]["record"]["anchoring"]["bitcoin_height"] == height
        assert view["submission"]["anchoring"]["bitcoin_height"] == height
        # The block's time, read by the relay from the explorers (the fake chain's blocks are 600 s apart).
        block_time = datetime.fromtimestamp(1_700_000_000 + 600 * height, UTC)
        assert {datetime.fromisoformat(a["block_time"]) for a in anchorings(view)} == {block_time}
        with zipfile.ZipFile(out / "bundle.zip") as zf:
            attestation = zf.read("attestation.html").decode()
        shown = block_time.astimezone(ZoneInfo(p.config.tracker.timezone)).strftime("%d/%m/%Y %H:%M:%S")
        assert shown in attestation

        # The bundle verifies on its own: relay stopped, database gone, bundle copied to an empty directory.
        await p.service.stop()
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
        assert ACKNOWLEDGER in result.stdout and "VERIFIED" in result.stdout
        code, text = await asyncio.to_thread(verify_cli, str(alone / "bundle.zip"), *esplora, "--regtest", "--json")
        report = json.loads(text)
        assert code == 0 and report["status"] == "verified"
        assert {r["recipient"]: r["acknowledged_at"] is not None for r in report["recipients"]} == {
            r: r == ACKNOWLEDGER for r in RECIPIENTS}
        assert {r["anchor"]["bitcoin_height"] for r in report["records"]} == {height}

        # Unpacked into a directory, as a court expert might do first: the same verdict.
        with zipfile.ZipFile(alone / "bundle.zip") as zf:
            zf.extractall(alone / "unpacked")
        code, text = await asyncio.to_thread(verify_cli, str(alone / "unpacked"), *esplora, "--regtest")
        assert code == 0 and "VERIFIED" in text, text

        # Pending anchors: exit 1, with or without a header source (nothing reaches a block yet).
        code, text = await asyncio.to_thread(verify_cli, str(out / "pending.zip"), *esplora, "--regtest")
        assert code == 1, text
        code, text = await asyncio.to_thread(verify_cli, str(out / "pending.zip"))
        assert code == 1, text
        # Anchored, without a header source: exit 4, and the report says what to give.
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code, text = await asyncio.to_thread(verify_cli, str(alone / "bundle.zip"))
        assert code == 4 and "give a header source" in err.getvalue(), (text, err.getvalue())

        # Any single changed byte of any file: exit 2, naming that file.
        with zipfile.ZipFile(alone / "bundle.zip") as zf:
            files = {name: zf.read(name) for name in zf.namelist()}
        # manifest, attestation, VERIFY, verify.html; original; copies; records+.ots; keys
        assert len(files) == 4 + 1 + 3 + 9 * 2 + 2
        for name, content in files.items():
            changed = alone / "changed.zip"
            middle = len(content) // 2
            with zipfile.ZipFile(changed, "w") as zf:
                for other, data in files.items():
                    zf.writestr(other, data if other != name else
                                content[:middle] + bytes([content[middle] ^ 0x20]) + content[middle + 1 :])
            code, text = await asyncio.to_thread(verify_cli, str(changed), *esplora, "--regtest", "--json")
            report = json.loads(text)
            assert code == 2 and report["problem"]["file"] == name, (name, report["problem"])


async def test_a_temporary_refusal_then_delivery_is_in_the_proof(tmp_path):
    carol = "carol@example.net"
    async with proved_message(tmp_path, replies={carol: ["451 4.3.0 try again later", "250 2.0.0 Ok: queued as C2"]}) as p:
        await p.anchor()
        height = await p.confirm()
        message_url = f"{p.base}/api/v1/messages/{quote(MESSAGE_ID, safe='')}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {p.token}"}) as api:
            async with api.get(message_url) as r:
                view = await r.json()
            async with api.get(message_url + "/bundle") as r:
                bundle = tmp_path / "bundle.zip"
                bundle.write_bytes(await r.read())
        esplora = [arg for url in p.explorers for arg in ("--esplora", url)]
        code, text = await asyncio.to_thread(verify_cli, str(bundle), *esplora, "--regtest", "--json")
    assert_matches("Message", view)
    rcpt = next(r for r in view["recipients"] if r["recipient"] == carol)
    assert rcpt["handoff"]["record"]["code"] == 250
    assert [h["record"]["code"] for h in rcpt["earlier_handoffs"]] == [451]
    assert rcpt["earlier_handoffs"][0]["anchoring"]["bitcoin_height"] == height
    report = json.loads(text)
    assert code == 0, report["problem"]
    summary = next(r for r in report["recipients"] if r["recipient"] == carol)
    assert summary["earlier_answers"] == ["451 4.3.0 try again later"] and summary["delivered"]
    assert len(report["records"]) == 10  # the 9 of the simple case and the 451's hand-off record
