"""relay.anchor.merkle: trees and leaf proofs identical to the opentimestamps library's own."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentimestamps.core.notary import BitcoinBlockHeaderAttestation, PendingAttestation
from opentimestamps.core.op import OpAppend, OpSHA256
from opentimestamps.core.serialize import BytesSerializationContext
from opentimestamps.core.timestamp import DetachedTimestampFile, Timestamp, make_merkle_tree

from relay.anchor import merkle


def library_proofs(digests, nonces, attach):
    """Every leaf's .ots as the library builds it: make_merkle_tree over digest -> append nonce -> sha256."""
    files = [DetachedTimestampFile(OpSHA256(), Timestamp(d)) for d in digests]
    tips = [f.timestamp.ops.add(OpAppend(nonces[i * 16 : i * 16 + 16])).ops.add(OpSHA256()) for i, f in enumerate(files)]
    attach(make_merkle_tree(tips))
    out = []
    for f in files:
        ctx = BytesSerializationContext()
        f.serialize(ctx)
        out.append(ctx.getbytes())
    return out


def pending(stamp):
    stamp.attestations.add(PendingAttestation("https://alice.btc.calendar.opentimestamps.org"))


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=70), st.randoms(use_true_random=False))
def test_leaf_ots_is_byte_identical_to_the_library(size, rnd):
    digests = [rnd.randbytes(32) for _ in range(size)]
    nonces = rnd.randbytes(16 * size)
    tree = merkle.Tree.build(digests, nonces)
    expected = library_proofs(digests, nonces, pending)
    root = Timestamp(tree.root)
    pending(root)
    for position, digest in enumerate(digests):
        assert merkle.leaf_ots(digest, nonces[position * 16 : position * 16 + 16], tree.path(position), root) == expected[position]


def test_tree_root_is_the_library_root_and_paths_reach_it():
    rnd = random.Random(7)
    digests = [rnd.randbytes(32) for _ in range(1001)]
    nonces = rnd.randbytes(16 * 1001)
    tree = merkle.Tree.build(digests, nonces)
    tips = [Timestamp(d).ops.add(OpAppend(nonces[i * 16 : i * 16 + 16])).ops.add(OpSHA256()) for i, d in enumerate(digests)]
    assert make_merkle_tree(tips).msg == tree.root
    for position in (0, 1, 500, 999, 1000):
        commitment = merkle.leaf_commitment(digests[position], nonces[position * 16 : position * 16 + 16])
        assert merkle.root_of(commitment, tree.path(position)) == tree.root


def test_sibling_positions_skip_the_odd_last_node():
    # 5 leaves: the 5th moves up twice unchanged, then pairs with the root of the first four.
    assert merkle.sibling_positions(5, 4) == [(2, 0, False)]
    assert merkle.sibling_positions(5, 0) == [(0, 1, True), (1, 1, True), (2, 1, True)]
    assert merkle.level_sizes(5) == [5, 3, 2, 1]
    with pytest.raises(ValueError):
        merkle.sibling_positions(5, 5)


def test_a_path_that_misses_the_root_is_refused():
    tree = merkle.Tree.build([bytes(32), bytes(31) + b"\x01"], bytes(32))
    with pytest.raises(ValueError):
        merkle.leaf_ots(bytes(32), bytes(16), tree.path(0), Timestamp(hashlib.sha256(b"other").digest()))


def test_bitcoin_branch_keeps_the_lowest_bitcoin_path_only():
    root = Timestamp(hashlib.sha256(b"root").digest())
    for height, salt in ((812, b"a"), (810, b"b")):
        tip = root.ops.add(OpAppend(salt)).ops.add(OpSHA256())
        tip.attestations.add(BitcoinBlockHeaderAttestation(height))
    root.ops.add(OpAppend(b"c")).attestations.add(PendingAttestation("https://bob.btc.calendar.opentimestamps.org"))
    branch = merkle.bitcoin_branch(root)
    assert [(att.height) for _, att in branch.all_attestations()] == [810]
    assert merkle.bitcoin_branch(Timestamp(bytes(32))) is None


def test_bitcoin_branch_keeps_the_shortest_of_paths_to_the_same_block():
    # Two calendars confirmed in the same block; the longer path's first op sorts first.
    root = Timestamp(hashlib.sha256(b"root").digest())
    longer = root.ops.add(OpAppend(b"a")).ops.add(OpSHA256())
    for level in range(12):
        longer = longer.ops.add(OpAppend(bytes([level]) * 32)).ops.add(OpSHA256())
    longer.attestations.add(BitcoinBlockHeaderAttestation(810))
    root.ops.add(OpAppend(b"b")).ops.add(OpSHA256()).attestations.add(BitcoinBlockHeaderAttestation(810))
    branch = merkle.bitcoin_branch(root)
    assert list(branch.ops) == [OpAppend(b"b")]
    assert len(merkle.serialize_timestamp(branch)) == 3 + 1 + 12  # append 'b', sha256, attestation (0x00, tag, length, height)


def test_graft_merges_a_calendar_answer_where_the_commitment_is():
    root = Timestamp(hashlib.sha256(b"root").digest())
    commitment = root.ops.add(OpAppend(b"n")).ops.add(OpSHA256())
    commitment.attestations.add(PendingAttestation("https://alice.btc.calendar.opentimestamps.org"))
    upgrade = Timestamp(commitment.msg)
    upgrade.ops.add(OpSHA256()).attestations.add(BitcoinBlockHeaderAttestation(800000))
    assert merkle.graft(root, upgrade)
    assert merkle.bitcoin_heights(root) == [800000]
    assert not merkle.graft(root, upgrade)  # nothing new the second time
