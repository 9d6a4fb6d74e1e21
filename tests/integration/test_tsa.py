"""RFC 3161 tokens per batch root, against a local TSA (``openssl ts -reply``) and local calendars."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from relay.anchor.worker import Anchorer, anchor_status
from relay.config import TSAAuthority, TSAConfig
from relay.evidence.tsa_verify import check_token, load_certificates
from relay.store import tsa as tsa_store
from tests.conftest import require_tool
from tests.integration import test_anchor
from tests.integration.test_anchor import Clock, anchor_config, batch_states, queue, records
from tests.support.polling import until
from tests.support.tsa import LocalTSA, TSAPki

pytestmark = pytest.mark.external  # openssl ts answers every token
store, chain, calendars = test_anchor.store, test_anchor.chain, test_anchor.calendars  # the same fixtures


@pytest.fixture
def pki(tmp_path):
    require_tool("openssl")
    return TSAPki.make(tmp_path / "pki")


def tsa_config(tsa: LocalTSA, pki: TSAPki, **kw) -> TSAConfig:
    authority = TSAAuthority(name="Local TSA", url=tsa.url, ca_files=[str(pki.ca_pem)], qualified=True,
                             trust_list="test list")
    return TSAConfig(authorities=[authority], retry_first=30.0, retry_max=300.0, **kw)


async def stored_token(store, batch_id):
    row = await store.fetchone("SELECT * FROM tsa_tokens WHERE batch_id = ?", (batch_id,))
    assert row is not None
    return row


async def openssl_verify(root: bytes, tsr: bytes, chain_pem: bytes, tmp_path) -> tuple[int, str]:
    (tmp_path / "batch.tsr").write_bytes(tsr)
    (tmp_path / "chain.pem").write_bytes(chain_pem)
    proc = await asyncio.create_subprocess_exec(
        "openssl", "ts", "-verify", "-digest", root.hex(), "-in", str(tmp_path / "batch.tsr"),
        "-CAfile", str(tmp_path / "chain.pem"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("leaves", [1, 2, 5])
async def test_a_batch_gets_one_token_over_its_root_that_openssl_verifies(store, calendars, pki, tmp_path, leaves):
    await queue(store, records(leaves))
    async with LocalTSA(pki) as tsa, Anchorer(store, anchor_config(calendars), tsa=tsa_config(tsa, pki)) as anchorer:
        (outcome,) = await anchorer.batch_all()
        assert tsa.requests == anchorer.tsa_requests == 1
    assert outcome.state == "pending"
    token = await tsa_store.token_of_batch(store, outcome.batch_id)
    assert token is not None and token.stamp.authority == "Local TSA" and token.stamp.qualified
    checked = check_token(token.stamp.tsr, root=token.root, cas=load_certificates(pki.ca_pem.read_bytes()))
    assert checked.signer == "C=FR,CN=Estampille Test TSA"
    assert checked.unix_time == token.stamp.token_time
    code, out = await openssl_verify(token.root, token.stamp.tsr, token.stamp.chain_pem, tmp_path)
    assert code == 0 and "Verification: OK" in out, out
    code, out = await openssl_verify(hashlib.sha256(token.root).digest(), token.stamp.tsr, token.stamp.chain_pem,
                                     tmp_path)
    assert code != 0, "openssl accepted the token for another digest"


@pytest.mark.parametrize("fault,check", [
    ("imprint", "imprint:"), ("nonce", "nonce:"), ("signature", "signature or chain:"), ("chain", "signature or chain:"),
])
async def test_a_wrong_token_is_refused_when_received_and_bitcoin_goes_on(store, calendars, pki, tmp_path, fault, check):
    await queue(store, records(3))
    signer = TSAPki.make(tmp_path / "rogue") if fault == "chain" else pki  # a TSA under a CA the relay does not trust
    async with LocalTSA(signer) as tsa, Anchorer(store, anchor_config(calendars), tsa=tsa_config(tsa, pki)) as anchorer:
        tsa.fault = "" if fault == "chain" else fault
        (outcome,) = await anchorer.batch_all()
    assert outcome.state == "pending" and len(outcome.accepted) == 3
    row = await stored_token(store, outcome.batch_id)
    assert row["state"] == "waiting" and row["tsr"] is None
    assert check in row["last_error"], row["last_error"]
    assert await tsa_store.token_of_batch(store, outcome.batch_id) is None


async def test_a_tsa_that_is_down_delays_nothing_and_the_token_arrives_on_retry(store, calendars, pki):
    await queue(store, records(4))
    clock = Clock()
    clock.now -= 90  # the retries below bring it back to the TSA's time
    async with LocalTSA(pki) as tsa, Anchorer(store, anchor_config(calendars), clock=clock,
                                              tsa=tsa_config(tsa, pki)) as anchorer:
        tsa.down = True
        (outcome,) = await anchorer.batch_all()
        assert outcome.state == "pending"  # in the calendars, as without a TSA
        row = await stored_token(store, outcome.batch_id)
        assert (row["state"], row["attempts"]) == ("waiting", 1) and "HTTP 503" in row["last_error"]
        assert row["next_attempt_at"] >= clock.now + 30.0 * 0.8
        assert await anchorer.retry_tokens() == 0  # not due yet
        status = await anchor_status(store, anchor_config(calendars), clock.now)
        assert any(line.startswith(f"batch {outcome.batch_id}: no RFC 3161 token yet after 1 attempt(s)")
                   and "HTTP 503" in line for line in status), status
        assert tsa.requests == 1
        clock.now += 30.0
        assert await anchorer.retry_tokens() == 0  # due, still down: the wait doubles
        row = await stored_token(store, outcome.batch_id)
        assert row["attempts"] == 2 and row["next_attempt_at"] >= clock.now + 60.0 * 0.8
        tsa.down = False
        clock.now += 60.0
        assert await anchorer.retry_tokens() == 1
        # Bitcoin goes on meanwhile: the batch confirms as it would have.
        chain_height = calendars[0].confirm()
        for cal in calendars[1:]:
            cal.confirm()
        assert chain_height > 0
        await anchorer.upgrade()
    assert await batch_states(store) == ["confirmed"]
    token = await tsa_store.token_of_batch(store, outcome.batch_id)
    assert token is not None and abs(token.stamp.token_time - clock.now) <= 60


async def test_a_token_far_from_our_clock_is_refused(store, calendars, pki):
    await queue(store, records(2))
    clock = Clock()
    clock.now -= 600  # our clock ten minutes behind the TSA's
    async with LocalTSA(pki) as tsa, Anchorer(store, anchor_config(calendars), clock=clock,
                                              tsa=tsa_config(tsa, pki)) as anchorer:
        (outcome,) = await anchorer.batch_all()
    row = await stored_token(store, outcome.batch_id)
    assert row["state"] == "waiting" and row["last_error"].startswith("Local TSA: time:"), row["last_error"]


async def test_without_a_tsa_configured_no_token_is_asked(store, calendars):
    await queue(store, records(2))
    async with Anchorer(store, anchor_config(calendars), tsa=TSAConfig()) as anchorer:
        (outcome,) = await anchorer.batch_all()
        assert anchorer.tsa_requests == 0
    assert await store.fetchone("SELECT * FROM tsa_tokens") is None


async def test_an_answer_that_breaks_the_parser_is_a_failure_to_retry_not_a_lost_token(store, calendars, pki,
                                                                                        monkeypatch):
    await queue(store, records(2))

    def broken(*args, **kwargs):
        raise RuntimeError("the library failed in a way it does not document")

    monkeypatch.setattr("relay.anchor.tsa.check_token", broken)
    async with LocalTSA(pki) as tsa, Anchorer(store, anchor_config(calendars), tsa=tsa_config(tsa, pki)) as anchorer:
        (outcome,) = await anchorer.batch_all()
    assert outcome.state == "pending"
    row = await stored_token(store, outcome.batch_id)
    assert row["state"] == "waiting" and "RuntimeError: the library failed" in row["last_error"]


async def test_a_relay_stopped_while_the_tsa_answers_asks_again_after_a_restart(store, calendars, pki):
    await queue(store, records(3))
    clock = Clock()
    async with LocalTSA(pki) as tsa:
        tsa.delay = 30.0  # longer than the test waits: the relay stops first
        async with Anchorer(store, anchor_config(calendars), clock=clock, tsa=tsa_config(tsa, pki, timeout=60.0)) as a:
            round_ = asyncio.create_task(a.batch_all())
            row = await until(lambda: store.fetchone("SELECT * FROM tsa_tokens"), "the token's row")
            round_.cancel()
            with pytest.raises(asyncio.CancelledError):
                await round_
        assert (row["state"], row["attempts"]) == ("waiting", 0)
        assert await batch_states(store) == ["pending"]  # the batch went to the calendars regardless
        tsa.delay = 0.0
        clock.now += 30.0
        async with Anchorer(store, anchor_config(calendars), clock=clock, tsa=tsa_config(tsa, pki)) as a:
            assert await a.retry_tokens() == 1
    assert await tsa_store.token_of_batch(store, row["batch_id"]) is not None
