"""Verification of a standalone OpenTimestamps proof of a document (an evidence record).

Pure: the block headers come in as a mapping ``{height: 80-byte header}``
fetched beforehand (see ``relay.anchor.headers``). The flow everywhere (CLI, proof
bundles) is::

    heights = required_heights(ots_bytes)            # which headers to fetch
    headers = await fetch_headers(source, heights)    # relay.anchor.headers, I/O
    result = verify_ots(record_bytes, ots_bytes, headers)

For each Bitcoin attestation the header is checked on its own: its proof of
work against its nBits under mainnet rules (``regtest=True`` only for tests),
then its Merkle root against the attested commitment. A header source is
trusted to give the header of the best chain at a height; the proof-of-work
check makes a forged header cost real work, it does not prove the chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from opentimestamps.core.notary import BitcoinBlockHeaderAttestation, PendingAttestation
from opentimestamps.core.op import OpSHA256
from opentimestamps.core.serialize import BytesDeserializationContext, DeserializationError
from opentimestamps.core.timestamp import DetachedTimestampFile

HEADER_BYTES = 80
MAX_OTS_BYTES = 1_000_000  # real proofs are a few kilobytes
# Highest target a block may have (Bitcoin Core's powLimit).
MAINNET_POW_LIMIT = 0x00000000FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF
REGTEST_POW_LIMIT = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF

Status = Literal["verified", "pending", "invalid"]


@dataclass(frozen=True)
class BlockHeader:
    """The fields of an 80-byte Bitcoin block header that verification uses."""

    raw: bytes
    version: int
    prev_hash: bytes
    merkle_root: bytes  # internal byte order, as attested
    time: int
    bits: int
    nonce: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> BlockHeader:
        if len(raw) != HEADER_BYTES:
            raise ValueError(f"a block header is {HEADER_BYTES} bytes, got {len(raw)}")
        return cls(
            raw=raw,
            version=int.from_bytes(raw[0:4], "little"),
            prev_hash=raw[4:36],
            merkle_root=raw[36:68],
            time=int.from_bytes(raw[68:72], "little"),
            bits=int.from_bytes(raw[72:76], "little"),
            nonce=int.from_bytes(raw[76:80], "little"),
        )

    @property
    def hash(self) -> str:
        """The block hash as shown by explorers and bitcoind (big-endian hex)."""
        return block_hash(self.raw)


def block_hash(raw: bytes) -> str:
    return hashlib.sha256(hashlib.sha256(raw).digest()).digest()[::-1].hex()


def target_from_bits(bits: int) -> int:
    """The target encoded by a compact nBits value; ValueError if negative or overflowing."""
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    if bits & 0x00800000 and mantissa:
        raise ValueError(f"nBits {bits:#010x} encodes a negative target")
    target = mantissa >> 8 * (3 - exponent) if exponent <= 3 else mantissa << 8 * (exponent - 3)
    if target >= 1 << 256:
        raise ValueError(f"nBits {bits:#010x} overflows 256 bits")
    return target


def check_proof_of_work(header: BlockHeader, *, regtest: bool = False) -> None:
    """Raise ValueError unless the header's hash meets its nBits target within the network's limit."""
    target = target_from_bits(header.bits)
    limit = REGTEST_POW_LIMIT if regtest else MAINNET_POW_LIMIT
    if target == 0 or target > limit:
        network = "regtest" if regtest else "mainnet"
        raise ValueError(f"nBits {header.bits:#010x} is outside {network} proof-of-work limits")
    if int(header.hash, 16) > target:
        raise ValueError(f"block {header.hash} does not meet its own proof-of-work target")


@dataclass(frozen=True)
class Verification:
    """The outcome of verifying one proof; ``reason`` is one line for people."""

    status: Status
    reason: str
    height: int | None = None
    block_hash: str | None = None
    block_time: int | None = None  # Unix time of the block header
    pending_calendars: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "verified"


def parse_ots(ots_bytes: bytes) -> DetachedTimestampFile:
    """Parse a ``.ots`` file; ValueError with a short reason if it is not one."""
    if len(ots_bytes) > MAX_OTS_BYTES:
        raise ValueError(f"proof is larger than {MAX_OTS_BYTES} bytes")
    ctx = BytesDeserializationContext(ots_bytes)
    try:
        detached = DetachedTimestampFile.deserialize(ctx)
        ctx.assert_eof()
    except (DeserializationError, ValueError, TypeError) as exc:
        raise ValueError(f"not a valid OpenTimestamps proof: {exc}") from exc
    return detached


def required_heights(ots_bytes: bytes) -> list[int]:
    """Heights of the block headers needed to verify the proof, ascending; ValueError if unparsable."""
    timestamp = parse_ots(ots_bytes).timestamp
    return sorted(
        {att.height for _, att in timestamp.all_attestations() if isinstance(att, BitcoinBlockHeaderAttestation)}
    )


def verify_ots(
    document: bytes, ots_bytes: bytes, headers: Mapping[int, bytes], *, regtest: bool = False
) -> Verification:
    """Verify that ``ots_bytes`` timestamps ``document`` in Bitcoin.

    ``headers`` maps each of :func:`required_heights` to its raw header. Every
    Bitcoin attestation must check out (one bad attestation makes the proof
    invalid); the one with the earliest block time is reported (the document existed by then; of equal
    times, the lowest height). With no Bitcoin attestation and at
    least one pending one, the result is pending.
    """
    try:
        detached = parse_ots(ots_bytes)
    except ValueError as exc:
        return Verification("invalid", str(exc))
    if not isinstance(detached.file_hash_op, OpSHA256):
        return Verification("invalid", f"proof hashes the file with {detached.file_hash_op.TAG_NAME}, expected sha256")
    digest = detached.file_hash_op.hash_fd(io.BytesIO(document))
    if digest != detached.file_digest:
        return Verification(
            "invalid", f"document digest {digest.hex()} does not match the proof's {detached.file_digest.hex()}"
        )
    attestations = list(detached.timestamp.all_attestations())
    confirmed = sorted(
        ((msg, att) for msg, att in attestations if isinstance(att, BitcoinBlockHeaderAttestation)),
        key=lambda item: item[1].height,
    )
    pending = tuple(sorted({att.uri for _, att in attestations if isinstance(att, PendingAttestation)}))
    results = [check_attestation(msg, att.height, headers, regtest=regtest) for msg, att in confirmed]
    for result in results:
        if result.status == "invalid":
            return result
    if results:
        # Block times do not grow with height (a block may be dated up to two hours ahead): the
        # document existed by the earliest of them.
        return min(results, key=lambda r: (r.block_time or 0, r.height or 0))
    if pending:
        return Verification("pending", f"pending confirmation at {', '.join(pending)}", pending_calendars=pending)
    return Verification("invalid", "proof carries no Bitcoin or pending attestation")


def check_attestation(msg: bytes, height: int, headers: Mapping[int, bytes], *, regtest: bool = False) -> Verification:
    """Check one Bitcoin attestation of ``msg`` at ``height``: the header's proof of work, then its Merkle root."""
    raw = headers.get(height)
    if raw is None:
        return Verification("invalid", f"no block header for height {height}")
    try:
        header = BlockHeader.from_bytes(raw)
        check_proof_of_work(header, regtest=regtest)
    except ValueError as exc:
        return Verification("invalid", f"block {height}: {exc}")
    if header.merkle_root != msg:
        return Verification("invalid", f"block {height} ({header.hash}) has another Merkle root than the proof")
    return Verification(
        "verified",
        f"Bitcoin block {height} attests existence as of {_utc(header.time)}",
        height=height,
        block_hash=header.hash,
        block_time=header.time,
    )


def _utc(unix: int) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
