"""Anchoring batches as OpenTimestamps Merkle trees, and one leaf's standalone proof.

Pure: no I/O, no clock, no randomness; callers pass nonces in.

A leaf is an evidence record's SHA-256 ``d``. Each leaf gets a 16-byte random
nonce so that calendars and sibling leaves learn nothing about it; its
commitment is ``sha256(d || nonce)`` (OpAppend(nonce), OpSHA256). The
commitments are merkelised exactly as ``opentimestamps.core.timestamp.make_merkle_tree``
does (pairs left to right; a left node gets OpAppend(right), a right node
OpPrepend(left), then OpSHA256; an odd last node moves up unchanged), so a
leaf's exported ``.ots`` is byte for byte what the library would produce.

The library's Timestamp objects cost about a kilobyte each, so a batch of a
million leaves is built with hashlib into a :class:`Tree` (one ``bytes`` per
level, 32 bytes per node: 64 MB for 10^6 leaves); the library is used only
for the few objects of one leaf's proof. A leaf's path is not stored per leaf:
its position in the batch names the siblings (:func:`sibling_positions`), so
each leaf costs its nonce and its position, and each batch its tree.

A ``.ots`` file here timestamps the record's canonical JSON bytes: its file
hash op is OpSHA256 and its file digest the record digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from opentimestamps.core.notary import BitcoinBlockHeaderAttestation, PendingAttestation
from opentimestamps.core.op import OpAppend, OpPrepend, OpSHA256
from opentimestamps.core.serialize import BytesDeserializationContext, BytesSerializationContext
from opentimestamps.core.timestamp import DetachedTimestampFile, Timestamp

NONCE_BYTES = 16
HASH_BYTES = 32


@dataclass(frozen=True)
class Tree:
    """A batch's Merkle tree: ``levels[0]`` holds the leaf commitments, the last level the root.

    Each level is the concatenation of its 32-byte nodes, in order.
    """

    levels: tuple[bytes, ...]

    @classmethod
    def build(cls, digests: Sequence[bytes], nonces: bytes) -> Tree:
        """Build the tree of ``digests`` (32-byte record digests), ``nonces`` being 16 bytes per leaf."""
        if not digests:
            raise ValueError("a batch needs at least one leaf")
        if len(nonces) != NONCE_BYTES * len(digests):
            raise ValueError(f"expected {NONCE_BYTES} nonce bytes per leaf")
        sha256 = hashlib.sha256
        level = b"".join(
            sha256(d + nonces[i * NONCE_BYTES : (i + 1) * NONCE_BYTES]).digest() for i, d in enumerate(digests)
        )
        levels = [level]
        while len(level) > HASH_BYTES:
            levels.append(level := _next_level(level))
        return cls(tuple(levels))

    @property
    def size(self) -> int:
        return len(self.levels[0]) // HASH_BYTES

    @property
    def root(self) -> bytes:
        return self.levels[-1]

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index * HASH_BYTES : (index + 1) * HASH_BYTES]

    def path(self, position: int) -> list[Step]:
        """The steps from leaf ``position``'s commitment up to the root."""
        return [Step(append, self.node(level, index)) for level, index, append in sibling_positions(self.size, position)]


def _next_level(level: bytes) -> bytes:
    sha256 = hashlib.sha256
    pairs = len(level) // (2 * HASH_BYTES)
    out = b"".join(sha256(level[i * 64 : i * 64 + 64]).digest() for i in range(pairs))
    if len(level) % (2 * HASH_BYTES):
        out += level[-HASH_BYTES:]  # an odd last node moves up unchanged, as in make_merkle_tree
    return out


@dataclass(frozen=True)
class Step:
    """One level of a leaf's path: ``append`` is True when the sibling is on the right."""

    append: bool
    sibling: bytes


def level_sizes(size: int) -> list[int]:
    """Node counts per level for a tree of ``size`` leaves, leaves first, root (1) last."""
    sizes = [size]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def sibling_positions(size: int, position: int) -> list[tuple[int, int, bool]]:
    """For leaf ``position`` in a tree of ``size`` leaves: (level, sibling index, sibling is right) per step.

    Levels where the node is an odd last one have no sibling and no step.
    """
    if not 0 <= position < size:
        raise ValueError(f"position {position} outside a tree of {size} leaves")
    steps = []
    index = position
    for level, count in enumerate(level_sizes(size)[:-1]):
        sibling = index ^ 1
        if sibling < count:
            steps.append((level, sibling, sibling > index))
        index //= 2
    return steps


def leaf_commitment(digest: bytes, nonce: bytes) -> bytes:
    return hashlib.sha256(digest + nonce).digest()


def root_of(commitment: bytes, path: Iterable[Step]) -> bytes:
    """The root a leaf commitment reaches through ``path`` (to check a stored path)."""
    msg = commitment
    for step in path:
        msg = hashlib.sha256(msg + step.sibling if step.append else step.sibling + msg).digest()
    return msg


def serialize_timestamp(timestamp: Timestamp) -> bytes:
    ctx = BytesSerializationContext()
    timestamp.serialize(ctx)
    return ctx.getbytes()


def deserialize_timestamp(data: bytes, msg: bytes) -> Timestamp:
    """Parse serialized timestamp operations that start from ``msg`` (a calendar reply, a stored root)."""
    ctx = BytesDeserializationContext(data)
    timestamp = Timestamp.deserialize(ctx, msg)
    ctx.assert_eof()
    return timestamp


def bitcoin_branches(timestamp: Timestamp) -> Timestamp | None:
    """A copy of ``timestamp`` keeping only the paths to its Bitcoin attestations, every one of them.

    Pending branches are dropped: a confirmed proof needs none, and stays small. Call it only once
    every Bitcoin attestation left in ``timestamp`` has been checked against its block header
    (:func:`discard` the others): our verifier refuses a proof with one bad attestation (the stock
    client skips it and reports the lowest that verifies). The file's order of the paths is the format's
    (operations sorted by their bytes), not ours to choose. None if there is no Bitcoin attestation.
    """
    paths = list(_bitcoin_paths(timestamp, ()))
    if not paths:
        return None
    copy = Timestamp(timestamp.msg)
    for _, path in paths:
        copy.merge(_copy_path(timestamp, path))
    return copy


def _bitcoin_paths(timestamp: Timestamp, ops: tuple) -> Iterator[tuple[int, list]]:
    """(height, ops then attestation) for every Bitcoin attestation under ``timestamp``."""
    for att in timestamp.attestations:
        if isinstance(att, BitcoinBlockHeaderAttestation):
            yield att.height, [*ops, att]
    for op, sub in timestamp.ops.items():
        yield from _bitcoin_paths(sub, (*ops, op))


def _copy_path(timestamp: Timestamp, path: list) -> Timestamp:
    copy = Timestamp(timestamp.msg)
    if isinstance(path[0], BitcoinBlockHeaderAttestation):
        copy.attestations.add(path[0])
        return copy
    op = path[0]
    copy.ops[op] = _copy_path(timestamp.ops[op], path[1:])
    return copy


def pending_calendars(timestamp: Timestamp) -> list[tuple[bytes, str]]:
    """(commitment, calendar URI) of each pending attestation: the commitment is what to ask for."""
    return sorted(
        (msg, att.uri) for msg, att in timestamp.all_attestations() if isinstance(att, PendingAttestation)
    )


def unanswered_calendars(timestamp: Timestamp) -> list[tuple[bytes, str]]:
    """:func:`pending_calendars` whose commitment has no Bitcoin attestation yet: what an upgrade still asks for.

    A calendar that has answered with a block has given its last word; asking it again each
    round, for every batch not confirmed, would only load it.
    """
    return [
        (commitment, calendar) for commitment, calendar in pending_calendars(timestamp)
        if not any(isinstance(att, BitcoinBlockHeaderAttestation)
                   for stamp in _stamps_for(timestamp, commitment) for _, att in stamp.all_attestations())
    ]


def bitcoin_heights(timestamp: Timestamp) -> list[int]:
    return sorted({att.height for _, att in timestamp.all_attestations() if isinstance(att, BitcoinBlockHeaderAttestation)})


@dataclass(frozen=True)
class Claim:
    """A Bitcoin attestation found in a timestamp: ``msg`` must be the Merkle root of block ``height``.

    ``calendar`` is the calendar whose pending commitment it hangs under (the one that sent it),
    or "" when none does.
    """

    calendar: str
    msg: bytes
    height: int


def bitcoin_claims(timestamp: Timestamp) -> list[Claim]:
    """Every Bitcoin attestation under ``timestamp``, with the calendar that sent it, sorted by height."""
    found: dict[tuple[bytes, int], str] = {}
    for commitment, calendar in pending_calendars(timestamp):
        for stamp in _stamps_for(timestamp, commitment):
            for msg, att in stamp.all_attestations():
                if isinstance(att, BitcoinBlockHeaderAttestation):
                    found.setdefault((msg, att.height), calendar)
    for msg, att in timestamp.all_attestations():
        if isinstance(att, BitcoinBlockHeaderAttestation):
            found.setdefault((msg, att.height), "")
    return sorted((Claim(calendar, msg, height) for (msg, height), calendar in found.items()),
                  key=lambda c: (c.height, c.calendar, c.msg))


def discard(timestamp: Timestamp, claim: Claim) -> None:
    """Remove the Bitcoin attestation ``claim`` names, and the operations that led only to it."""
    _discard(timestamp, claim.msg, BitcoinBlockHeaderAttestation(claim.height))


def _discard(stamp: Timestamp, msg: bytes, attestation: BitcoinBlockHeaderAttestation) -> bool:
    """True when ``stamp`` is left with neither attestation nor operation."""
    if stamp.msg == msg:
        stamp.attestations.discard(attestation)
    for op, sub in list(stamp.ops.items()):
        if _discard(sub, msg, attestation):
            del stamp.ops[op]
    return not stamp.attestations and not stamp.ops


def leaf_timestamp(digest: bytes, nonce: bytes, path: Sequence[Step], root: Timestamp) -> DetachedTimestampFile:
    """The standalone proof of one leaf: record digest -> append nonce -> sha256 -> path -> root's operations.

    ``root`` is the batch root's timestamp (calendar replies, upgrades), grafted as is;
    pass :func:`bitcoin_branches` of it for a confirmed batch.
    """
    stamp = Timestamp(digest)
    tip = stamp.ops.add(OpAppend(nonce)).ops.add(OpSHA256())
    for step in path:
        op = OpAppend(step.sibling) if step.append else OpPrepend(step.sibling)
        tip = tip.ops.add(op).ops.add(OpSHA256())
    if tip.msg != root.msg:
        raise ValueError("the leaf's path does not reach the batch root")
    tip.attestations.update(root.attestations)
    for op, sub in root.ops.items():
        tip.ops[op] = sub
    return DetachedTimestampFile(OpSHA256(), stamp)


def leaf_ots(digest: bytes, nonce: bytes, path: Sequence[Step], root: Timestamp) -> bytes:
    """The ``.ots`` file bytes of one leaf (see :func:`leaf_timestamp`)."""
    ctx = BytesSerializationContext()
    leaf_timestamp(digest, nonce, path, root).serialize(ctx)
    return ctx.getbytes()


def graft(timestamp: Timestamp, upgraded: Timestamp) -> bool:
    """Merge ``upgraded`` (a calendar's answer for one commitment) wherever that commitment occurs.

    Returns True when it brought an attestation ``timestamp`` did not have.
    """
    before = {(msg, att) for msg, att in timestamp.all_attestations()}
    for stamp in _stamps_for(timestamp, upgraded.msg):
        stamp.merge(upgraded)
    return any(item not in before for item in timestamp.all_attestations())


def _stamps_for(timestamp: Timestamp, msg: bytes) -> list[Timestamp]:
    found = [timestamp] if timestamp.msg == msg else []
    for sub in timestamp.ops.values():
        found.extend(_stamps_for(sub, msg))
    return found
