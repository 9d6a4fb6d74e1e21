"""An attestation counts only once checked: a lying calendar beside two honest ones, with and
without a header source, and the https-only upgrades (issue #17, point 1)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from prometheus_client import generate_latest

from relay.anchor import merkle
from relay.anchor.worker import Anchorer, anchor_now, anchor_status, export_ots
from relay.config import AnchorConfig
from relay.evidence.ots_verify import parse_ots, verify_ots
from relay.evidence.records import Record
from relay.ops.metrics import Metrics
from relay.store import Store
from tests.conftest import require_tool
from tests.integration.test_anchor import JS_DIR, ots_tool, run
from tests.support.calendar import BitcoindFake, EsploraFake, FakeCalendar, FakeChain
from tests.support.proved import MESSAGE_ID, proved_message
from tracker.admin_auth import COOKIE

FORGED_HEIGHT = 1  # a real, low block of the chain, which commits to nothing of ours


def records(n: int) -> list[Record]:
    return [Record.from_fields({"type": "receipt", "delivery": f"d{i}", "kind": "acknowledged"}) for i in range(n)]


RECS = records(5)


@pytest.fixture
async def store(tmp_path):
    """A store with the five RECS waiting for a batch."""
    store = await Store.open(tmp_path / "data")
    async with store.transaction() as db:
        await Store.insert_records(db, RECS, now=time.time())
    yield store
    await store.close()


@pytest.fixture
async def liar_and_honest():
    """A chain with a block at FORGED_HEIGHT, a calendar that forges an attestation at it, two honest ones."""
    chain = FakeChain()
    chain.mine(os.urandom(32))
    cals = [FakeCalendar(chain) for _ in range(3)]
    for cal in cals:
        await cal.start()
    yield chain, cals
    for cal in cals:
        await cal.stop()


def config(cals, **kw) -> AnchorConfig:
    return AnchorConfig(calendars=[c.url for c in cals], allowlist=[], http_for_tests=True, regtest=True, **kw)


def claims_of(ots: bytes) -> list[int]:
    timestamp = parse_ots(ots).timestamp
    return sorted(claim.height for claim in merkle.bitcoin_claims(timestamp))


def rejected(metrics: Metrics, calendar: str) -> float:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(f'estampille_anchor_rejected_attestations_total{{calendar="{calendar}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.external
async def test_a_forged_attestation_is_discarded_and_the_honest_ones_confirm(store, liar_and_honest, tmp_path, caplog):
    chain, (liar, honest, other) = liar_and_honest
    metrics = Metrics()
    caplog.set_level(logging.WARNING, "estampille.anchor")
    async with EsploraFake(chain) as e1, EsploraFake(chain) as e2:
        async with Anchorer(store, config([liar, honest, other], esplora=[e1.url, e2.url]),
                            on_rejected=metrics.rejected_attestation) as anchorer:
            [outcome] = await anchorer.batch_all()
            liar.forge(FORGED_HEIGHT)  # it answers before any honest calendar has a block
            report = await anchorer.upgrade()
            assert report.confirmed == () and report.attested == ()
            assert [b.state for b in await store.anchor_batches(["pending"])] == ["pending"]
            heights = [honest.confirm(), other.confirm()]
            report = await anchorer.upgrade()
        assert report.confirmed == (outcome.batch_id,)
        [batch] = await store.anchor_batches(["confirmed"])
        assert batch.bitcoin_height == min(heights) == 2
        assert batch.block_time == int.from_bytes(chain.headers[2][68:72], "little")
        refused = f"calendar {liar.url} sent a Bitcoin attestation at height {FORGED_HEIGHT} that does not check"
        assert caplog.text.count(refused) == 2  # once a round: the liar is asked again, and lies again
        assert rejected(metrics, liar.url) == 2 and rejected(metrics, honest.url) == 0

        headers = dict(enumerate(chain.headers))
        node_bin, ots = require_tool("node"), ots_tool()
        assert (JS_DIR / "node_modules" / "opentimestamps").exists(), "run 'npm install' in tests/js"
        async with BitcoindFake(chain) as node:
            for rec in RECS:
                proof = await export_ots(store, rec.digest)
                assert claims_of(proof) == heights  # every attestation that checks, and only those
                result = verify_ots(rec.body, proof, headers, regtest=True)
                assert (result.status, result.height) == ("verified", 2), result.reason
                path = tmp_path / f"{rec.digest}.json"
                path.write_bytes(rec.body)
                Path(f"{path}.ots").write_bytes(proof)
                code, out = await run(ots, "--no-cache", "--bitcoin-node", node.url, "verify", f"{path}.ots")
                assert code == 0 and "Success! Bitcoin block 2" in out, out
                code, out = await run(node_bin, str(JS_DIR / "verify-ots.js"), str(path), f"{path}.ots", e1.url)
                assert code == 0 and json.loads(out.strip().splitlines()[-1])["bitcoin"]["height"] in heights, out


async def test_without_a_header_source_the_batch_stays_attested_until_one_checks_it(store, liar_and_honest):
    chain, (liar, honest, other) = liar_and_honest
    async with Anchorer(store, config([liar, honest, other])) as anchorer:
        [outcome] = await anchorer.batch_all()
        liar.forge(FORGED_HEIGHT)
        heights = [honest.confirm(), other.confirm()]
        report = await anchorer.upgrade()
        assert report.confirmed == () and report.attested == (outcome.batch_id,)
        asked = [len(cal.requests) for cal in (liar, honest, other)]
        report = await anchorer.upgrade()  # a round later: still attested, nothing lost
        assert report.attested == (outcome.batch_id,)
        # Each calendar has answered with a block: none is asked again.
        assert [len(cal.requests) for cal in (liar, honest, other)] == asked
    [batch] = await store.anchor_batches(["attested"])
    assert batch.bitcoin_height == FORGED_HEIGHT and batch.block_time is None
    root = merkle.deserialize_timestamp(batch.timestamp, batch.root)
    # Nothing pruned: every calendar's pending attestation and every claim, the false one included.
    assert {calendar for _, calendar in merkle.pending_calendars(root)} == {liar.url, honest.url, other.url}
    assert [(c.calendar, c.height) for c in merkle.bitcoin_claims(root)] == [
        (liar.url, FORGED_HEIGHT), (honest.url, heights[0]), (other.url, heights[1])]
    lines = await anchor_status(store, config([]), time.time())
    assert f"batch {outcome.batch_id}: attested, 5 leaves" in lines[1] and "Bitcoin block 1 NOT VERIFIED" in lines[1]
    proof = await export_ots(store, RECS[0].digest)
    assert claims_of(proof) == [FORGED_HEIGHT, *heights]
    assert len(merkle.pending_calendars(parse_ots(proof).timestamp)) == 3

    # A header source configured: the next round checks every claim, drops the false one, confirms.
    async with BitcoindFake(chain) as node:
        async with Anchorer(store, config([liar, honest, other], bitcoind=node.url)) as anchorer:
            report = await anchorer.upgrade()
        assert report.confirmed == (outcome.batch_id,)
        [batch] = await store.anchor_batches(["confirmed"])
        assert batch.bitcoin_height == 2
        headers = dict(enumerate(chain.headers))
        for rec in RECS:
            proof = await export_ots(store, rec.digest)
            assert claims_of(proof) == heights
            assert verify_ots(rec.body, proof, headers, regtest=True).ok


async def test_the_admin_page_says_not_verified_until_a_header_source_checks(tmp_path):
    async with proved_message(tmp_path, header_sources=False) as p:
        await p.anchor()
        height = await p.confirm()
        async with aiohttp.ClientSession() as session:
            async with session.post(p.base + "/admin/login", data={"token": p.token}, allow_redirects=False) as r:
                cookie = {"Cookie": f"{COOKIE}={r.cookies[COOKIE].value}"}
            page = p.base + "/admin/messages/" + quote(MESSAGE_ID, safe="")
            async with session.get(page, headers={**cookie, "Accept-Language": "fr"}) as r:
                html = await r.text()
            assert f"bloc {height} annoncé par un calendrier, non vérifié" in html, html
            assert "ancré dans Bitcoin" not in html

            checked = {**p.config.anchor.__dict__, "esplora": list(p.explorers)}
            run_ = await anchor_now(p.store, AnchorConfig(**checked))
            assert any("1 confirmed" in line for line in run_.lines), run_.lines
            async with session.get(page, headers={**cookie, "Accept-Language": "fr"}) as r:
                html = await r.text()
            assert f"ancré dans Bitcoin, bloc {height}" in html and "annoncé par un calendrier" not in html


async def test_upgrades_go_only_to_https_calendars_on_the_allowlist(store):
    chain = FakeChain()
    async with FakeCalendar(chain) as cal:
        for http_for_tests, asked in ((False, 0), (True, 1)):
            anchorer_config = AnchorConfig(calendars=[cal.url], min_calendars=1, allowlist=[],
                                           http_for_tests=http_for_tests)
            async with Anchorer(store, anchorer_config) as anchorer:
                if not await store.anchor_batches(["pending"]):
                    await anchorer.batch_all()
                before = len(cal.requests)
                await anchorer.upgrade()
                assert len(cal.requests) - before == asked
    off = Anchorer(store, AnchorConfig(calendars=["https://a.example/"], allowlist=["*.calendar.example"]))
    assert off.allowed("https://a.example/") and off.allowed("https://b.calendar.example")
    assert not off.allowed("http://a.example/") and not off.allowed("http://b.calendar.example")
    assert not off.allowed("https://evil.example") and not off.allowed("ftp://b.calendar.example")


async def test_anchor_now_exits_non_zero_when_no_calendar_answered(tmp_path, capsys):
    import asyncio

    from relay.cli import main

    chain = FakeChain()
    async with FakeCalendar(chain) as cal:
        cal.down = True
        cfg = tmp_path / "estampille.toml"
        cfg.write_text(f'data_dir = "data"\n[anchor]\ncalendars = ["{cal.url}"]\nmin_calendars = 1\nallowlist = []\n'
                       "http_for_tests = true\n")
        store = await Store.open(tmp_path / "data")
        async with store.transaction() as db:
            await Store.insert_records(db, records(2), now=time.time())
        await store.close()
        code = await asyncio.to_thread(main, ["anchor", "--now", "--config", str(cfg)])
        assert code == 4 and "no calendar answered" in capsys.readouterr().out
        cal.down = False
        code = await asyncio.to_thread(main, ["anchor", "--now", "--config", str(cfg)])
        assert code == 0, capsys.readouterr().out
