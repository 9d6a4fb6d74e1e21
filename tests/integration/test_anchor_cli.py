"""The anchoring commands as an operator runs them: anchor --now, anchor status, record, ots, verify-ots."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.anchor.headers import format_headers_file
from relay.cli import main
from relay.evidence.records import Record, iso_time
from relay.store import Store
from tests.support.calendar import BitcoindFake, EsploraFake, FakeCalendar, FakeChain, weaken


async def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run `estampille ARGV` in a thread (it runs its own loop) while the fakes serve on this one."""
    code = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
async def setup(tmp_path):
    chain = FakeChain()
    cals = [FakeCalendar(chain) for _ in range(3)]
    for cal in cals:
        await cal.start()
    calendars = ", ".join(f'"{cal.url}"' for cal in cals)
    node = await BitcoindFake(chain).start()  # what the relay checks the calendars' attestations against
    config = tmp_path / "estampille.toml"
    config.write_text(f'data_dir = "data"\n[anchor]\ncalendars = [{calendars}]\nallowlist = []\nhttp_for_tests = true\n'
                      f'bitcoind = "{node.url}"\nregtest = true\n')
    store = await Store.open(tmp_path / "data")
    recs = [Record.from_fields({"type": "receipt", "delivery": f"d{i}", "kind": "fetched", "at": iso_time(time.time())})
            for i in range(3)]
    async with store.transaction() as db:
        for rec in recs:
            await Store.insert_record(db, rec, now=time.time())
    await store.close()
    yield chain, cals, str(config), recs
    for server in (*cals, node):
        await server.stop()


async def test_anchor_now_status_export_and_verify(setup, tmp_path, capsys):
    chain, cals, config, recs = setup
    code, out = await cli(capsys, "anchor", "status", "--config", config)
    assert code == 0 and "pending leaves: 3" in out and "confirmed batches: 0" in out

    code, out = await cli(capsys, "anchor", "--now", "--config", config)
    assert code == 0 and "batch 1: 3 leaves, accepted by 3 calendar(s), pending" in out, out
    code, out = await cli(capsys, "anchor", "status", "--config", config)
    assert "pending leaves: 0" in out and "batch 1: pending, 3 leaves" in out, out

    record, proof = tmp_path / "r.json", tmp_path / "r.json.ots"
    assert (await cli(capsys, "record", recs[0].digest, "-o", str(record), "--config", config))[0] == 0
    assert record.read_bytes() == recs[0].body
    assert (await cli(capsys, "ots", recs[0].digest, "-o", str(proof), "--config", config))[0] == 0
    async with BitcoindFake(chain) as node:
        code, out = await cli(capsys, "verify-ots", str(record), str(proof), "--bitcoind", node.url, "--regtest")
        assert code == 1 and out.startswith("pending:"), out

        for cal in cals:
            cal.confirm()
        code, out = await cli(capsys, "anchor", "--now", "--config", config)
        assert "1 confirmed" in out, out
        code, out = await cli(capsys, "anchor", "status", "--config", config)
        assert "confirmed batches: 1 (3 leaves), last at Bitcoin height 1" in out, out
        assert (await cli(capsys, "ots", recs[0].digest, "-o", str(proof), "--config", config))[0] == 0

        code, out = await cli(capsys, "verify-ots", str(record), str(proof), "--bitcoind", node.url, "--regtest")
        assert code == 0 and out.startswith("verified: Bitcoin block 1 attests existence as of"), out
        # Without --regtest the fake chain's proof of work is not enough.
        code, out = await cli(capsys, "verify-ots", str(record), str(proof), "--bitcoind", node.url)
        assert code == 2 and "mainnet" in out, out

    headers = tmp_path / "headers.txt"
    headers.write_text(format_headers_file(dict(enumerate(chain.headers))))
    code, out = await cli(capsys, "verify-ots", str(record), str(proof), "--headers", str(headers), "--regtest")
    assert code == 0, out
    headers.write_text(format_headers_file({**dict(enumerate(chain.headers)), 1: weaken(chain.headers[1])}))
    code, out = await cli(capsys, "verify-ots", str(record), str(proof), "--headers", str(headers), "--regtest")
    assert code == 2 and "proof-of-work" in out, out

    async with EsploraFake(chain) as one, EsploraFake(chain) as two, EsploraFake(FakeChain(start_time=1)) as other:
        for _ in cals:  # as high as the proof's blocks, other headers
            other.chain.mine(bytes(32))
        code, out = await cli(capsys, "verify-ots", str(record), str(proof), "--esplora", one.url, "--esplora", two.url,
                              "--regtest")
        assert code == 0, out
        code, out = await cli(capsys, "verify-ots", str(record), str(proof), "--esplora", one.url, "--esplora", one.url,
                              "--regtest")
        assert code == 4 and "given twice" in out, out
        code, out = await cli(capsys, "verify-ots", str(record), str(proof), "--esplora", one.url, "--esplora", other.url,
                              "--regtest")
        assert code == 4 and "disagree" in out, out
        code, out = await cli(capsys, "verify-ots", str(record), str(proof), "--esplora", one.url)
        assert code == 4 and "twice" in out, out

    record.write_bytes(recs[0].body[:-2] + b"X}")
    code, out = await cli(capsys, "verify-ots", str(record), str(proof), "--headers", str(headers), "--regtest")
    assert code == 2 and out.startswith("invalid: document digest"), out


async def test_ots_of_an_unknown_or_unbatched_record(setup, tmp_path, capsys):
    _, _, config, recs = setup
    code, out = await cli(capsys, "ots", "00" * 32, "-o", str(tmp_path / "x.ots"), "--config", config)
    assert code == 4 and "no evidence record" in out
    code, out = await cli(capsys, "ots", recs[1].digest, "-o", str(tmp_path / "x.ots"), "--config", config)
    assert code == 4 and "not batched yet" in out
