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


def test_bitcoin_branches_keep_every_bitcoin_path_and_drop_the_pending_ones():
    root = Timestamp(hashlib.sha256(b"root").digest())
    for height, salt in ((812, b"a"), (810, b"b")):
        tip = root.ops.add(OpAppend(salt)).ops.add(OpSHA256())
        tip.attestations.add(BitcoinBlockHeaderAttestation(height))
    root.ops.add(OpAppend(b"c")).attestations.add(PendingAttestation("https://bob.btc.calendar.opentimestamps.org"))
    branches = merkle.bitcoin_branches(root)
    assert sorted(att.height for _, att in branches.all_attestations()) == [810, 812]
    assert OpAppend(b"c") not in branches.ops
    assert merkle.bitcoin_branches(Timestamp(bytes(32))) is None


def test_claims_name_the_calendar_whose_commitment_they_hang_under_and_discard_removes_one():
    root = Timestamp(hashlib.sha256(b"root").digest())
    for uri, height in (("https://liar.example", 1), ("https://honest.example", 810)):
        commitment = root.ops.add(OpAppend(uri.encode())).ops.add(OpSHA256())
        commitment.attestations.add(PendingAttestation(uri))
        commitment.ops.add(OpSHA256()).ops.add(OpAppend(bytes(32))).attestations.add(BitcoinBlockHeaderAttestation(height))
    claims = merkle.bitcoin_claims(root)
    assert [(c.calendar, c.height) for c in claims] == [("https://liar.example", 1), ("https://honest.example", 810)]
    merkle.discard(root, claims[0])
    assert [(c.calendar, c.height) for c in merkle.bitcoin_claims(root)] == [("https://honest.example", 810)]
    # The liar's pending attestation stays (it is asked again), the operations that led only to the claim go.
    assert len(merkle.pending_calendars(root)) == 2
    liar = root.ops[OpAppend(b"https://liar.example")].ops[OpSHA256()]
    assert not liar.ops
    assert len(merkle.serialize_timestamp(root)) < len(merkle.serialize_timestamp(merkle.bitcoin_branches(root))) + 200


def test_graft_merges_a_calendar_answer_where_the_commitment_is():
    root = Timestamp(hashlib.sha256(b"root").digest())
    commitment = root.ops.add(OpAppend(b"n")).ops.add(OpSHA256())
    commitment.attestations.add(PendingAttestation("https://alice.btc.calendar.opentimestamps.org"))
    upgrade = Timestamp(commitment.msg)
    upgrade.ops.add(OpSHA256()).attestations.add(BitcoinBlockHeaderAttestation(800000))
    assert merkle.graft(root, upgrade)
    assert merkle.bitcoin_heights(root) == [800000]
    assert not merkle.graft(root, upgrade)  # nothing new the second time
