"""relay.evidence.ots_verify: proofs against block headers, proof of work under mainnet rules (regtest behind a flag)."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
from opentimestamps.core.notary import BitcoinBlockHeaderAttestation, PendingAttestation
from opentimestamps.core.op import OpAppend, OpSHA256
from opentimestamps.core.serialize import BytesSerializationContext
from opentimestamps.core.timestamp import DetachedTimestampFile, Timestamp

from relay.anchor.headers import format_headers_file, parse_headers_file
from relay.errors import HeaderSourceError
from relay.evidence.ots_verify import BlockHeader, check_proof_of_work, required_heights, target_from_bits, verify_ots
from tests.support.calendar import FakeChain, mine_header, weaken

# Public Bitcoin mainnet data.
GENESIS_HEADER = bytes.fromhex(
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e"
    "67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c"
)
GENESIS_COINBASE = bytes.fromhex(
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d0104"
    "455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365"
    "636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1"
    "a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b"
    "6bf11d5fac00000000"
)
BLOCK_840000_HEADER = bytes.fromhex(
    "00e05f2aab948491071265ad552351d0ad625745668da54b0172010000000000000000004f89a5d73bd4d4887f25981fe8"
    "1892ccafda10c27f52d6f3dd28183a7c411b03b7072366194203177d9863ea"
)


def serialize(detached: DetachedTimestampFile) -> bytes:
    ctx = BytesSerializationContext()
    detached.serialize(ctx)
    return ctx.getbytes()


def genesis_proof() -> bytes:
    """A proof that the genesis coinbase transaction existed at block 0: sha256 of it, sha256 again = txid = root."""
    stamp = Timestamp(hashlib.sha256(GENESIS_COINBASE).digest())
    stamp.ops.add(OpSHA256()).attestations.add(BitcoinBlockHeaderAttestation(0))
    return serialize(DetachedTimestampFile(OpSHA256(), stamp))


def chain_proof(document: bytes) -> tuple[bytes, FakeChain]:
    """A proof of ``document`` in a regtest-PoW fake chain, block 1."""
    stamp = Timestamp(hashlib.sha256(document).digest())
    tip = stamp.ops.add(OpAppend(b"nonce")).ops.add(OpSHA256())
    chain = FakeChain()
    tip.attestations.add(BitcoinBlockHeaderAttestation(chain.mine(tip.msg)))
    return serialize(DetachedTimestampFile(OpSHA256(), stamp)), chain


def test_genesis_proof_verifies_under_mainnet_rules():
    result = verify_ots(GENESIS_COINBASE, genesis_proof(), {0: GENESIS_HEADER})
    assert result.status == "verified", result.reason
    assert (result.height, result.block_time) == (0, 1231006505)
    assert result.block_hash == "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
    assert "2009-01-03 18:15:05 UTC" in result.reason


def test_a_modern_mainnet_header_passes_proof_of_work():
    header = BlockHeader.from_bytes(BLOCK_840000_HEADER)
    assert header.hash == "0000000000000000000320283a032748cef8227873ff4872689bf23f1cda83a5"
    assert header.merkle_root[::-1].hex() == "031b417c3a1828ddf3d6527fc210daafcc9218e81f98257f88d4d43bd7a5894f"
    check_proof_of_work(header)


def test_one_byte_changed_in_the_record_is_invalid():
    changed = bytearray(GENESIS_COINBASE)
    changed[100] ^= 1
    result = verify_ots(bytes(changed), genesis_proof(), {0: GENESIS_HEADER})
    assert result.status == "invalid" and "does not match" in result.reason


def test_regtest_headers_are_refused_under_mainnet_rules_and_accepted_with_the_flag():
    proof, chain = chain_proof(b"record")
    headers = dict(enumerate(chain.headers))
    assert required_heights(proof) == [1]
    assert verify_ots(b"record", proof, headers, regtest=True).status == "verified"
    result = verify_ots(b"record", proof, headers)
    assert result.status == "invalid" and "outside mainnet proof-of-work limits" in result.reason


def test_header_with_insufficient_proof_of_work_is_invalid():
    proof, chain = chain_proof(b"record")
    result = verify_ots(b"record", proof, {1: weaken(chain.headers[1])}, regtest=True)
    assert result.status == "invalid" and "proof-of-work" in result.reason
    weak_genesis = GENESIS_HEADER[:76] + b"\x00\x00\x00\x00"
    assert verify_ots(GENESIS_COINBASE, genesis_proof(), {0: weak_genesis}).status == "invalid"


def test_header_with_another_merkle_root_is_invalid():
    proof, chain = chain_proof(b"record")
    chain.mine(bytes(32))
    result = verify_ots(b"record", proof, {1: chain.headers[2]}, regtest=True)
    assert result.status == "invalid" and "Merkle root" in result.reason


def test_missing_header_and_garbage_proof_are_invalid():
    proof, _ = chain_proof(b"record")
    assert verify_ots(b"record", proof, {}, regtest=True).status == "invalid"
    assert verify_ots(b"record", b"not a proof", {}).status == "invalid"
    assert verify_ots(b"record", proof[:-3], {}).status == "invalid"


def test_only_pending_attestations_is_pending():
    stamp = Timestamp(hashlib.sha256(b"record").digest())
    stamp.ops.add(OpAppend(b"x")).attestations.add(PendingAttestation("https://alice.btc.calendar.opentimestamps.org"))
    result = verify_ots(b"record", serialize(DetachedTimestampFile(OpSHA256(), stamp)), {})
    assert result.status == "pending"
    assert result.pending_calendars == ("https://alice.btc.calendar.opentimestamps.org",)


def test_target_from_bits():
    assert target_from_bits(0x1D00FFFF) == 0xFFFF << 208
    assert target_from_bits(0x03123456) == 0x123456
    assert target_from_bits(0x01120000) == 0x12
    with pytest.raises(ValueError):
        target_from_bits(0x04923456)  # negative


def test_headers_file_round_trip_and_errors():
    text = "# heights and headers\n\n" + format_headers_file({840000: BLOCK_840000_HEADER, 0: GENESIS_HEADER})
    assert parse_headers_file(text) == {0: GENESIS_HEADER, 840000: BLOCK_840000_HEADER}
    with pytest.raises(HeaderSourceError, match=":2:"):
        parse_headers_file(f"0 {GENESIS_HEADER.hex()}\n1 abcd\n")


@pytest.mark.parametrize("module", ["anchor/merkle", "evidence/ots_verify"])
def test_proof_modules_are_pure(module):
    """No network, loop, database, clock or randomness inside merkle and verify: callers pass them in."""
    source = (Path(__file__).resolve().parents[2] / "relay" / f"{module}.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    forbidden = {"asyncio", "aiohttp", "aiosqlite", "socket", "time", "os", "random", "secrets", "urllib"}
    assert imported & forbidden == set()


def test_of_several_attestations_the_earliest_block_time_is_reported():
    """Block times do not grow with height (one may be dated two hours ahead): the earliest proves most."""
    document = b"record"
    stamp = Timestamp(hashlib.sha256(document).digest())
    tips = [stamp.ops.add(OpAppend(salt)).ops.add(OpSHA256()) for salt in (b"a", b"b")]
    headers = {}
    for height, (tip, when) in enumerate(zip(tips, (1_700_007_200, 1_700_000_600), strict=True), start=1):
        tip.attestations.add(BitcoinBlockHeaderAttestation(height))
        headers[height] = mine_header(bytes(32), tip.msg, when)
    result = verify_ots(document, serialize(DetachedTimestampFile(OpSHA256(), stamp)), headers, regtest=True)
    assert (result.status, result.height, result.block_time) == ("verified", 2, 1_700_000_600)
