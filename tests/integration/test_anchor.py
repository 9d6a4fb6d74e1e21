"""Anchoring against local calendars, a regtest-PoW chain, an Esplora fake and a bitcoind fake.

Cross-checks with the stock `ots` client and javascript-opentimestamps (never skipped in CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from relay.anchor import merkle
from relay.anchor import worker as anchor
from relay.anchor.headers import AgreeingSources, BitcoindSource, EsploraSource, fetch_headers, verify_with
from relay.anchor.worker import Anchorer, export_ots
from relay.config import AnchorConfig, Config
from relay.errors import ConfigError, ConflictError, HeaderSourceError
from relay.evidence.ots_verify import verify_ots
from relay.evidence.records import Record
from relay.store import Store
from tests.conftest import require_tool
from tests.support.calendar import (
    MAINNET_LIKE,
    MAINNET_LIKE_BYTES,
    BitcoindFake,
    EsploraFake,
    FakeCalendar,
    FakeChain,
)

JS_DIR = Path(__file__).resolve().parent.parent / "js"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def records(n: int, tag: str = "r") -> list[Record]:
    return [Record.from_fields({"type": "receipt", "delivery": f"{tag}{i}", "kind": "acknowledged"}) for i in range(n)]


async def queue(store: Store, recs: list[Record]) -> None:
    async with store.transaction() as db:
        await Store.insert_records(db, recs, now=time.time())


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "data")
    yield store
    await store.close()


@pytest.fixture
def chain():
    return FakeChain()


class Calendars(list):
    """Three calendars on the chain, and a bitcoind the relay checks their attestations against."""

    node: BitcoindFake


@pytest.fixture
async def calendars(chain):
    cals = Calendars(FakeCalendar(chain) for _ in range(3))
    for cal in cals:
        await cal.start()
    async with BitcoindFake(chain) as cals.node:
        yield cals
    for cal in cals:
        await cal.stop()


def anchor_config(cals, **kw) -> AnchorConfig:
    """Test calendars over http, checked against the fixture's bitcoind unless ``kw`` names header sources;
    batches of up to 1,000 leaves (the 1,000-leaf tests make one batch)."""
    sources = {} if {"esplora", "bitcoind"} & set(kw) else {"bitcoind": cals.node.url, "regtest": True}
    return AnchorConfig(calendars=[c.url for c in cals], allowlist=[], retry_first=10.0, retry_max=100.0,
                        http_for_tests=True, **{"max_batch": 1000, **sources, **kw})


async def batch_states(store: Store) -> list[str]:
    return [row.state for row in await store.anchor_batches(["submitting", "pending", "attested", "confirmed"])]


async def run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode(errors="replace")


def ots_tool() -> str:
    """The stock client: next to this Python (venv), else on PATH."""
    beside = Path(sys.executable).parent / "ots"
    return str(beside) if beside.exists() else require_tool("ots")


async def test_thousand_leaves_one_batch_one_request_each_then_every_proof_verifies(store, calendars, chain):
    recs = records(1000)
    await queue(store, recs)
    async with Anchorer(store, anchor_config(calendars)) as anchorer:
        outcomes = await anchorer.batch_all()
        assert [(o.leaves, o.state, len(o.accepted)) for o in outcomes] == [(1000, "pending", 3)]
        assert [cal.requests for cal in calendars] == [[("POST", "/digest")]] * 3
        pending = await export_ots(store, recs[0].digest)
        assert verify_ots(recs[0].body, pending, {}).status == "pending"

        # Nothing in Bitcoin yet: the upgrade asks, hears "pending", changes nothing.
        report = await anchorer.upgrade()
        assert report.confirmed == () and await batch_states(store) == ["pending"]

        heights = [cal.confirm() for cal in calendars]
        report = await anchorer.upgrade()
    assert report.confirmed == (outcomes[0].batch_id,)
    batch = (await store.anchor_batches(["confirmed"]))[0]
    assert batch.bitcoin_height == min(heights)

    async with BitcoindFake(chain) as node:
        headers = await fetch_headers(BitcoindSource(node.url), range(chain.height + 1))
    for rec in recs:
        proof = await export_ots(store, rec.digest)
        result = verify_ots(rec.body, proof, headers, regtest=True)
        assert (result.status, result.height) == ("verified", min(heights)), result.reason


async def test_a_full_batch_at_the_default_size_gives_proofs_under_1500_bytes(store, chain):
    """With calendars as long as real ones, the leaves of a full default batch get the longest paths.

    One calendar's attestation: each further one that checks adds its own path (docs/anchoring.md).
    """
    config = AnchorConfig()
    recs = records(config.max_batch + 1)
    await queue(store, recs)
    cals = [FakeCalendar(chain, **MAINNET_LIKE) for _ in range(2)]
    for cal in cals:
        await cal.start()
    try:
        async with BitcoindFake(chain) as node, Anchorer(store, AnchorConfig(
                calendars=[c.url for c in cals], allowlist=[], http_for_tests=True, bitcoind=node.url, regtest=True,
        )) as anchorer:
            outcomes = await anchorer.batch_all()
            assert [o.leaves for o in outcomes] == [config.max_batch, 1]
            cals[0].confirm()
            assert len((await anchorer.upgrade()).confirmed) == 2
    finally:
        for cal in cals:
            await cal.stop()
    headers = dict(enumerate(chain.headers))
    for rec in (recs[0], recs[config.max_batch // 2], recs[config.max_batch - 1]):
        proof = await export_ots(store, rec.digest)
        assert verify_ots(rec.body, proof, headers, regtest=True).ok
        assert len(proof) < 1500


OWN_BYTES_ONE_LEAF = 31 + 1 + 1 + 32 + 19  # magic, version, file hash op, record digest, nonce (no path: one leaf)


async def test_mainnet_like_calendar_answers_as_long_as_a_real_calendar(store, chain):
    recs = records(1)
    await queue(store, recs)
    async with FakeCalendar(chain, **MAINNET_LIKE) as cal, BitcoindFake(chain) as node:
        async with Anchorer(store, AnchorConfig(calendars=[cal.url], min_calendars=1, allowlist=[], http_for_tests=True,
                                                bitcoind=node.url, regtest=True)) as anchorer:
            await anchorer.batch_all()
            cal.confirm()
            await anchorer.upgrade()
    proof = await export_ots(store, recs[0].digest)
    assert verify_ots(recs[0].body, proof, dict(enumerate(chain.headers)), regtest=True).ok
    # The real branch's block 808746 is a 3-byte varint; the fake chain's heights take 1 byte.
    assert len(proof) - OWN_BYTES_ONE_LEAF == MAINNET_LIKE_BYTES - 2


SAMPLE = (0, 511, 999)  # first, middle, and the odd last node of a level (1000 -> 125 at level 3)


async def test_stock_ots_client_upgrades_and_verifies(store, calendars, chain, tmp_path):
    ots = ots_tool()
    recs = records(1000)
    await queue(store, recs)
    async with Anchorer(store, anchor_config(calendars)) as anchorer:
        await anchorer.batch_all()
        for i in SAMPLE:  # exported while pending: the stock client upgrades them itself
            (tmp_path / f"p{i}.json").write_bytes(recs[i].body)
            (tmp_path / f"p{i}.json.ots").write_bytes(await export_ots(store, recs[i].digest))
        for cal in calendars:
            cal.confirm()
        whitelist = [arg for cal in calendars for arg in ("-l", cal.url)]
        for i in SAMPLE:
            code, out = await run(ots, "--no-cache", *whitelist, "upgrade", str(tmp_path / f"p{i}.json.ots"))
            assert code == 0 and "Timestamp complete" in out, out
        await anchorer.upgrade()
        for i in SAMPLE:  # exported once our upgrade grafted the block
            (tmp_path / f"c{i}.json").write_bytes(recs[i].body)
            (tmp_path / f"c{i}.json.ots").write_bytes(await export_ots(store, recs[i].digest))
    async with BitcoindFake(chain) as node:
        for name in [f"{kind}{i}.json.ots" for kind in "pc" for i in SAMPLE]:
            code, out = await run(ots, "--no-cache", "--bitcoin-node", node.url, "verify", str(tmp_path / name))
            assert code == 0 and "Success! Bitcoin block" in out, (name, out)
        # The stock client checks the Merkle root only: a changed record is refused by its digest.
        (tmp_path / "c0.json").write_bytes(recs[0].body.replace(b"r0", b"r7"))
        code, out = await run(ots, "--no-cache", "--bitcoin-node", node.url, "verify", str(tmp_path / "c0.json.ots"))
        assert code != 0 and "File does not match original" in out, out


async def test_javascript_opentimestamps_verifies_against_esplora_fake(store, calendars, chain, tmp_path):
    node_bin = require_tool("node")
    if not (JS_DIR / "node_modules" / "opentimestamps").exists():
        message = "tests/js/node_modules is missing: run 'npm install' in tests/js"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    recs = records(1000)
    await queue(store, recs)
    async with Anchorer(store, anchor_config(calendars)) as anchorer:
        await anchorer.batch_all()
        for cal in calendars:
            cal.confirm()
        await anchorer.upgrade()
        for i in SAMPLE:
            (tmp_path / f"r{i}.json").write_bytes(recs[i].body)
            (tmp_path / f"r{i}.json.ots").write_bytes(await export_ots(store, recs[i].digest))
    verify = str(JS_DIR / "verify-ots.js")
    async with EsploraFake(chain) as explorer:
        for i in SAMPLE:
            code, out = await run(node_bin, verify, str(tmp_path / f"r{i}.json"), str(tmp_path / f"r{i}.json.ots"),
                                  explorer.url)
            assert code == 0, out
            assert json.loads(out.strip().splitlines()[-1])["bitcoin"]["height"] == 1
        (tmp_path / "r0.json").write_bytes(recs[1].body)
        code, out = await run(node_bin, verify, str(tmp_path / "r0.json"), str(tmp_path / "r0.json.ots"), explorer.url)
        assert code == 1 and "does not match" in out, out


async def test_one_calendar_down_anchors_with_two(store, calendars):
    calendars[0].down = True
    await queue(store, records(10))
    async with Anchorer(store, anchor_config(calendars, min_calendars=2)) as anchorer:
        [outcome] = await anchorer.batch_all()
    assert outcome.state == "pending"
    assert set(outcome.accepted) == {calendars[1].url, calendars[2].url}


async def test_two_calendars_down_stays_pending_retried_then_completes(store, calendars, chain):
    clock = Clock()
    calendars[0].down = calendars[1].down = True
    recs = records(10)
    await queue(store, recs)
    async with Anchorer(store, anchor_config(calendars, min_calendars=2), clock=clock) as anchorer:
        [outcome] = await anchorer.batch_all()
        assert outcome.state == "submitting" and outcome.accepted == (calendars[2].url,)
        assert await anchorer.retry_submissions() == []  # not due before its backoff
        clock.now += 11
        [retry] = await anchorer.retry_submissions()
        assert retry.state == "submitting"
        assert calendars[2].digests_received == 1  # a calendar that accepted is not asked again
        calendars[0].down = calendars[1].down = False
        assert await anchorer.retry_submissions() == []  # backoff doubled: 20 s
        clock.now += 21
        [retry] = await anchorer.retry_submissions()
        assert retry.state == "pending" and len(retry.accepted) == 3
        for cal in calendars:
            cal.confirm()
        report = await anchorer.upgrade()
    assert report.confirmed == (outcome.batch_id,)
    headers = {h: raw for h, raw in enumerate(chain.headers)}
    assert verify_ots(recs[0].body, await export_ots(store, recs[0].digest), headers, regtest=True).ok


async def test_an_upgrade_and_a_retry_of_one_batch_at_once_lose_nothing(store, calendars, chain):
    """The two workers write the same batch's timestamp: neither may overwrite what the other added."""
    clock = Clock()
    calendars[1].down = calendars[2].down = True
    await queue(store, records(10))
    async with Anchorer(store, anchor_config(calendars, min_calendars=2), clock=clock) as anchorer:
        [outcome] = await anchorer.batch_all()
        assert outcome.state == "submitting" and outcome.accepted == (calendars[0].url,)
        calendars[0].confirm()
        calendars[1].down = False
        calendars[0].delay, calendars[1].delay = 0.2, 0.4  # the upgrade answers first, the retry after
        clock.now += 11
        await asyncio.gather(anchorer.upgrade(), anchorer.retry_submissions())
    [row] = await store.anchor_batches(["submitting", "pending", "confirmed"])
    assert row.state == "confirmed"  # not put back to 'pending' by a retry that read it before
    ots = await export_ots(store, records(1)[0].digest)
    headers = {h: raw for h, raw in enumerate(chain.headers)}
    assert verify_ots(records(1)[0].body, ots, headers, regtest=True).ok
    timestamp = row.timestamp
    for url in await store.anchor_reply_calendars(row.id):  # every calendar that accepted is in the proof
        assert url.encode() in timestamp


async def test_leaves_batched_meanwhile_by_another_process_are_batched_once(tmp_path, calendars, chain):
    """`estampille anchor --now` beside the relay: both form a batch of the same waiting leaves."""
    relay_store, cli_store = await Store.open(tmp_path / "data"), await Store.open(tmp_path / "data")
    recs = records(10)
    try:
        await queue(relay_store, recs)
        async with Anchorer(relay_store, anchor_config(calendars)) as relay, \
                Anchorer(cli_store, anchor_config(calendars)) as cli:
            submit = relay._submit

            async def submit_while_the_cli_batches(root, urls):
                replies = await submit(root, urls)
                [cli_batch] = await cli.batch_all()  # it stores its batch first
                assert cli_batch.leaves == 10
                return replies

            relay._submit = submit_while_the_cli_batches
            with pytest.raises(ConflictError, match="10 of the batch's 10 leaves were batched meanwhile"):
                await relay.batch_all()
        assert await batch_states(relay_store) == ["pending"]  # the relay's batch was not stored
        for cal in calendars:
            cal.confirm()
        async with Anchorer(relay_store, anchor_config(calendars)) as relay:
            assert len((await relay.upgrade()).confirmed) == 1
        headers = {h: raw for h, raw in enumerate(chain.headers)}
        for rec in recs:  # every leaf's proof is the one batch's
            assert verify_ots(rec.body, await export_ots(relay_store, rec.digest), headers, regtest=True).ok
    finally:
        await relay_store.close()
        await cli_store.close()


async def test_a_batch_confirmed_by_another_process_keeps_its_attestation(tmp_path, calendars, chain):
    relay_store, cli_store = await Store.open(tmp_path / "data"), await Store.open(tmp_path / "data")
    try:
        await queue(relay_store, records(5))
        async with Anchorer(relay_store, anchor_config(calendars)) as relay:
            await relay.batch_all()
            stale_rows = await relay_store.anchor_batches(["pending"])  # what the relay's round read
            for cal in calendars:
                cal.confirm()
            async with Anchorer(cli_store, anchor_config(calendars)) as cli:  # `anchor --now` confirms it
                assert len((await cli.upgrade()).confirmed) == 1
            [row] = stale_rows
            await relay_store.update_anchor_batch(  # the relay's round, from its stale read
                row.id, now=time.time(), timestamp=row.timestamp, state="pending",
                next_attempt_at=row.next_attempt_at,
            )
        [row] = await relay_store.anchor_batches(["submitting", "pending", "confirmed"])
        assert row.state == "confirmed" and row.bitcoin_height is not None
        ots = await export_ots(relay_store, records(1)[0].digest)
        headers = {h: raw for h, raw in enumerate(chain.headers)}
        assert verify_ots(records(1)[0].body, ots, headers, regtest=True).ok
    finally:
        await relay_store.close()
        await cli_store.close()


async def test_restart_between_submission_and_upgrade(tmp_path, calendars, chain):
    recs = records(20)
    store = await Store.open(tmp_path / "data")
    await queue(store, recs)
    async with Anchorer(store, anchor_config(calendars)) as anchorer:
        await anchorer.batch_all()
    await store.close()
    for cal in calendars:
        cal.confirm()
    store = await Store.open(tmp_path / "data")
    try:
        async with Anchorer(store, anchor_config(calendars)) as anchorer:
            report = await anchorer.upgrade()
        assert len(report.confirmed) == 1
        headers = {h: raw for h, raw in enumerate(chain.headers)}
        for rec in recs:
            assert verify_ots(rec.body, await export_ots(store, rec.digest), headers, regtest=True).ok
    finally:
        await store.close()


async def test_calendar_off_the_allowlist_is_not_contacted(store, chain):
    async with FakeCalendar(chain) as honest, FakeCalendar(chain, host="127.0.0.2") as elsewhere:
        # The configured calendar names another calendar in its attestations (as pools do).
        honest.attestation_uri = elsewhere.url
        await queue(store, records(4))
        config = AnchorConfig(calendars=[honest.url], min_calendars=1, allowlist=["*.calendar.opentimestamps.org"])
        async with Anchorer(store, config) as anchorer:
            await anchorer.batch_all()
            report = await anchorer.upgrade()
        assert report.checked == 1
        assert elsewhere.requests == []
        assert honest.requests == [("POST", "/digest")]


async def test_allowed_calendar_is_asked_by_the_commitment_not_the_root(store, calendars):
    await queue(store, records(4))
    async with Anchorer(store, anchor_config(calendars)) as anchorer:
        [outcome] = await anchorer.batch_all()
        await anchorer.upgrade()
    root = (await store.anchor_batches(["pending"]))[0].root.hex()
    for cal in calendars:
        [(method, path)] = cal.requests[1:]
        commitment = path.removeprefix("/timestamp/")
        assert method == "GET" and bytes.fromhex(commitment) in cal.pending and commitment != root


async def test_calendar_reply_over_ten_thousand_bytes_is_refused(store, calendars):
    calendars[0].oversize = True
    await queue(store, records(4))
    async with Anchorer(store, anchor_config(calendars, min_calendars=2)) as anchorer:
        [outcome] = await anchorer.batch_all()
        assert set(outcome.accepted) == {calendars[1].url, calendars[2].url}
        calendars[1].oversize = True
        calendars[1].confirm()
        report = await anchorer.upgrade()
    assert report.confirmed == ()  # the oversized upgrade was refused too


async def test_stale_batch_is_counted_and_resubmitted_to_other_calendars(store, calendars):
    clock = Clock()
    calendars[2].down = True
    await queue(store, records(4))
    config = anchor_config(calendars, min_calendars=2)
    async with Anchorer(store, config, clock=clock) as anchorer:
        [outcome] = await anchorer.batch_all()
        calendars[2].down = False
        clock.now += config.stale_after + 1
        report = await anchorer.upgrade()
        assert report.stale == (outcome.batch_id,) and report.resubmitted == ()
        assert anchorer.stale_batches == 1
        clock.now += config.resubmit_after
        report = await anchorer.upgrade()
        assert report.resubmitted == (outcome.batch_id,)
        assert [cal.digests_received for cal in calendars] == [1, 1, 2]
        report = await anchorer.upgrade()
        assert report.resubmitted == ()  # once


BATCHES = 20
DELAY = 0.25  # seconds each calendar takes to answer: a round of one batch at a time takes BATCHES * DELAY


async def test_many_batches_are_submitted_retried_and_upgraded_several_at_once(store, calendars, chain):
    """20 batches, calendars answering after DELAY: each round takes a few DELAYs, not one per batch, and
    no calendar ever has more than anchor.calendar_concurrency of our requests at once."""
    clock = Clock()
    config = anchor_config(calendars, max_batch=5, min_calendars=2)
    recs = records(config.max_batch * BATCHES)
    await queue(store, recs)
    for cal in calendars:
        cal.delay = DELAY
    calendars[0].down = calendars[1].down = True  # they answer 503, after DELAY
    bound = BATCHES * DELAY / 2
    async with Anchorer(store, config, clock=clock) as anchorer:
        started = time.monotonic()
        outcomes = await anchorer.batch_all()
        assert time.monotonic() - started < bound
        assert [(o.leaves, o.state, o.accepted) for o in outcomes] == [(5, "submitting", (calendars[2].url,))] * BATCHES

        calendars[0].down = calendars[1].down = False
        clock.now += 11
        started = time.monotonic()
        retries = await anchorer.retry_submissions()
        assert time.monotonic() - started < bound
        assert [(o.state, len(o.accepted)) for o in retries] == [("pending", 3)] * BATCHES
        # One request per calendar per batch and submission: the calendar that accepted is not asked again.
        assert [cal.digests_received for cal in calendars] == [2 * BATCHES, 2 * BATCHES, BATCHES]

        for cal in calendars:
            cal.confirm()
        started = time.monotonic()
        report = await anchorer.upgrade()
        assert time.monotonic() - started < bound
    assert sorted(report.confirmed) == sorted(o.batch_id for o in outcomes)
    assert await batch_states(store) == ["confirmed"] * BATCHES
    assert all(1 < cal.peak_in_flight <= config.calendar_concurrency for cal in calendars), [
        cal.peak_in_flight for cal in calendars]
    headers = dict(enumerate(chain.headers))
    for rec in recs:
        assert verify_ots(rec.body, await export_ots(store, rec.digest), headers, regtest=True).ok


async def test_the_batching_worker_makes_a_whole_backlog_in_its_first_round(store, calendars, monkeypatch):
    """With the next round an hour away, every batch of the backlog must come from the first one."""
    monkeypatch.setattr(anchor, "POLL_SECONDS", 3600.0)
    await queue(store, records(5 * BATCHES + 3))
    async with Anchorer(store, anchor_config(calendars, max_batch=5, interval=3600)) as anchorer:
        worker = asyncio.create_task(anchorer.run_batches())
        try:
            deadline = time.monotonic() + 30
            while (await store.anchor_summary()).unbatched:
                assert time.monotonic() < deadline, "the backlog was not batched in the worker's first round"
                await asyncio.sleep(0.05)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
    batches = await store.anchor_batches(["pending"])
    assert sorted(b.leaves for b in batches) == [3] + [5] * BATCHES


async def test_the_limit_per_calendar_holds_across_submission_and_upgrade_at_once(store, calendars):
    await queue(store, records(5 * 8))
    config = anchor_config(calendars, max_batch=5)
    async with Anchorer(store, config) as anchorer:
        await anchorer.batch_all()  # 8 pending batches for the upgrade round
        await queue(store, records(5 * 8, tag="more"))
        for cal in calendars:
            cal.delay = 0.1
        made, report = await asyncio.gather(anchorer.batch_all(), anchorer.upgrade())
    assert len(made) == 8 and report.checked == 8
    # 4 batches submitting and 4 upgrading want 8 requests at each calendar: the limit is the client's, not a round's.
    assert all(1 < cal.peak_in_flight <= config.calendar_concurrency for cal in calendars), [
        cal.peak_in_flight for cal in calendars]


def test_calendar_concurrency_below_one_is_refused():
    with pytest.raises(ConfigError, match="anchor.calendar_concurrency = 0"):
        Config.from_toml("[anchor]\ncalendar_concurrency = 0\n")


async def test_two_explorers_that_disagree_are_an_error(store, calendars, chain):
    other = FakeChain(start_time=1_600_000_000)
    recs = records(2)
    await queue(store, recs)
    async with Anchorer(store, anchor_config(calendars)) as anchorer:
        await anchorer.batch_all()
        calendars[0].confirm()
        other.mine(bytes(32))
        await anchorer.upgrade()
    proof = await export_ots(store, recs[0].digest)
    async with EsploraFake(chain) as one, EsploraFake(chain) as same, EsploraFake(other) as two:
        agreeing = AgreeingSources([EsploraSource(one.url), EsploraSource(same.url)])
        assert (await verify_with(agreeing, recs[0].body, proof, regtest=True)).ok
        with pytest.raises(HeaderSourceError, match="disagree"):
            await verify_with(AgreeingSources([EsploraSource(one.url), EsploraSource(two.url)]), recs[0].body, proof)


async def upgraded_batch(store: Store, calendars, config: AnchorConfig) -> anchor.UpgradeReport:
    """Two records batched, every calendar's block mined, one upgrade round."""
    await queue(store, records(2))
    async with Anchorer(store, config) as anchorer:
        await anchorer.batch_all()
        for cal in calendars:
            cal.confirm()
        return await anchorer.upgrade()


async def confirmed_batch(store: Store, calendars, config: AnchorConfig):
    """:func:`upgraded_batch`, which confirms the batch: its row."""
    assert len((await upgraded_batch(store, calendars, config)).confirmed) == 1
    return (await store.anchor_batches(["confirmed"]))[0]


@pytest.mark.parametrize("sources", ["two explorers", "bitcoind and an explorer"])
async def test_confirmed_batch_records_its_block_time_from_the_header_sources(store, calendars, chain, sources):
    async with EsploraFake(chain) as one, EsploraFake(chain) as two, BitcoindFake(chain) as node:
        given = {"two explorers": {"esplora": [one.url, two.url]},
                 "bitcoind and an explorer": {"esplora": [one.url], "bitcoind": node.url}}[sources]
        batch = await confirmed_batch(store, calendars, anchor_config(calendars, regtest=True, **given))
        asked = [server.requests for server in (one, two, node)]
    height = batch.bitcoin_height
    assert batch.block_time == int.from_bytes(chain.headers[height][68:72], "little") == 1_700_000_000 + 600 * height
    # Block hash, then header, at each source, for each of the three calendars' blocks (1, 2, 3).
    expected = {"two explorers": [6, 6, 0], "bitcoind and an explorer": [6, 0, 6]}
    assert [len(r) for r in asked] == expected[sources]


@pytest.mark.parametrize("esplora", ["one", "twice"])
def test_one_explorer_alone_or_given_twice_is_refused(esplora):
    urls = '["https://blockstream.info/api"]' if esplora == "one" else \
        '["https://blockstream.info/api", "https://BLOCKSTREAM.info/api/"]'
    with pytest.raises(ConfigError, match="alone" if esplora == "one" else "twice"):
        Config.from_toml(f"[anchor]\nesplora = {urls}\n")
    with pytest.raises(ConfigError):
        Anchorer(None, AnchorConfig(esplora=json.loads(urls)))  # type: ignore[arg-type]  # refused before any use


async def test_batches_confirmed_in_one_block_ask_the_explorer_for_its_header_once(store, calendars, chain):
    await queue(store, records(12))
    async with EsploraFake(chain) as explorer, EsploraFake(chain) as second:
        config = anchor_config(calendars, max_batch=2, regtest=True, esplora=[explorer.url, second.url])
        async with Anchorer(store, config) as anchorer:
            assert len(await anchorer.batch_all()) == 6
            calendars[0].confirm()
            report = await anchorer.upgrade()
        asked = list(explorer.requests)
    assert len(report.confirmed) == 6
    batches = await store.anchor_batches(["confirmed"])
    assert {(b.bitcoin_height, b.block_time) for b in batches} == {(1, 1_700_000_600)}
    assert asked == [("GET", "/block-height/1"), ("GET", f"/block/{chain.block_hash(1)}/header")]


@pytest.mark.parametrize("fault", ["other merkle root", "explorer down", "mainnet proof of work"])
async def test_a_header_that_does_not_check_out_confirms_nothing(store, calendars, chain, fault, caplog):
    other = FakeChain()  # same heights and times, other Merkle roots: headers hash fine, attest nothing of ours
    for _ in calendars:
        other.mine(os.urandom(32))
    async with EsploraFake(other if fault == "other merkle root" else chain) as explorer, \
            EsploraFake(other if fault == "other merkle root" else chain) as second:
        url = explorer.url
        if fault == "explorer down":
            await explorer.stop()
        config = anchor_config(calendars, esplora=[url, second.url], regtest=fault != "mainnet proof of work")
        report = await upgraded_batch(store, calendars, config)
    assert report.confirmed == ()
    [batch] = await store.anchor_batches(["pending", "attested"])
    if fault == "explorer down":  # nothing known against the claims: kept, unverified
        assert (batch.state, report.attested) == ("attested", (batch.id,))
        assert "cannot check the attestation at height 1" in caplog.text
    else:  # each claim checked and refused: discarded, the calendars asked again next round
        assert batch.state == "pending" and batch.block_time is None
        assert caplog.text.count("that does not check") == 3
        root = merkle.deserialize_timestamp(batch.timestamp, batch.root)
        assert merkle.bitcoin_claims(root) == [] and len(merkle.pending_calendars(root)) == 3


async def test_bitcoind_and_esplora_sources_give_the_chain_headers(chain):
    chain.mine(bytes(32))
    async with EsploraFake(chain) as explorer, BitcoindFake(chain) as node:
        assert await EsploraSource(explorer.url).header(1) == chain.headers[1]
        assert await BitcoindSource(node.url).header(1) == chain.headers[1]
        with pytest.raises(HeaderSourceError):
            await BitcoindSource(node.url).header(5)
        with pytest.raises(HeaderSourceError):
            await EsploraSource(explorer.url).header(5)


async def test_the_service_runs_the_anchoring_workers(tmp_path, calendars):
    from tests.support.relay import relay_config, running

    config = relay_config(tmp_path / "data", anchor={
        "enabled": True, "calendars": [c.url for c in calendars], "allowlist": [], "interval": 1,
    })
    async with running(config) as service:
        recs = records(5)
        await queue(service.store, recs)
        deadline = time.monotonic() + 15
        while not await service.store.anchor_batches(["pending"]):
            assert time.monotonic() < deadline, "no batch within 15 s with anchor.interval = 1"
            await asyncio.sleep(0.05)
        assert [cal.digests_received for cal in calendars] == [1, 1, 1]
        assert verify_ots(recs[0].body, await export_ots(service.store, recs[0].digest), {}).status == "pending"


async def test_webhook_events_for_anchored_and_confirmed_batches(store, calendars):
    store.webhook_urls = ("http://127.0.0.1:9/hook",)  # only queued here; the sender is tested elsewhere
    calendars[0].down = calendars[1].down = True
    await queue(store, records(3))
    clock = Clock()
    async with Anchorer(store, anchor_config(calendars, min_calendars=2), clock=clock) as anchorer:
        [outcome] = await anchorer.batch_all()
        assert outcome.state == "submitting"
        calendars[0].down = calendars[1].down = False
        clock.now += 11
        await anchorer.retry_submissions()
        for cal in calendars:
            cal.confirm()
        await anchorer.upgrade()
    rows = await store.fetchall("SELECT event, payload FROM webhook_events ORDER BY id")
    assert [row["event"] for row in rows] == ["anchored", "confirmed"]
    confirmed = json.loads(rows[1]["payload"])
    assert confirmed["batch"] == outcome.batch_id and confirmed["leaves"] == 3 and confirmed["bitcoin_height"] == 1
