"""The pure side of RFC 3161 tokens: the root a record's path leads to, the request's imprint,
and hostile token files in a bundle (relay.evidence.tsa_proof, relay.evidence.tsa_verify)."""

from __future__ import annotations

import hashlib
import json

import pytest

from relay.anchor import merkle
from relay.evidence.archive import BundleProblem
from relay.evidence.records import canonical_json
from relay.evidence.tsa_proof import check_record_token, root_of
from relay.evidence.tsa_verify import TokenError, TokenRequest, check_token

DIGESTS = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
NONCES = bytes(range(16 * 5))
RECORD = f"records/receipt-{DIGESTS[2].hex()}.json"


def steps(tree: merkle.Tree, position: int) -> list[tuple[str, bytes]]:
    return [("append" if s.append else "prepend", s.sibling) for s in tree.path(position)]


def test_each_records_path_leads_to_the_batch_root_and_the_request_stamps_it():
    tree = merkle.Tree.build(DIGESTS, NONCES)
    for i, digest in enumerate(DIGESTS):
        assert root_of(digest, NONCES[16 * i : 16 * i + 16], steps(tree, i)) == tree.root
    # What the worker asks a TSA to stamp: the two nodes below the root, whose SHA-256 is the root.
    request = TokenRequest.for_root(tree.levels[-2])
    assert request.root == tree.root and tree.root in request.der
    single = merkle.Tree.build(DIGESTS[:1], NONCES[:16])
    assert TokenRequest.for_root(DIGESTS[0] + NONCES[:16]).root == single.root


def leaf_file(**changes) -> dict[str, bytes]:
    tree = merkle.Tree.build(DIGESTS, NONCES)
    root = tree.root.hex()
    leaf = {"chain": f"tsa/{root}.chain.pem", "nonce": NONCES[32:48].hex(),
            "path": [[step, sibling.hex()] for step, sibling in steps(tree, 2)], "qualified": False,
            "record": DIGESTS[2].hex(), "root": root, "token": f"tsa/{root}.tsr", "trust_list": "", "tsa": "x",
            **changes}
    return {RECORD + ".tsa.json": canonical_json(leaf), f"tsa/{root}.tsr": b"0", f"tsa/{root}.chain.pem": b""}


@pytest.mark.parametrize("changes, detail", [
    ({"nonce": "00" * 16}, "does not lead to the root"),
    ({"path": [["sideways", "00" * 32]]}, "a step of its path is malformed"),
    ({"path": "append"}, "not a list of [step, sibling] pairs"),
    ({"record": "ab" * 32}, "not this record's"),
    ({"token": "tsa/other.tsr"}, "another root"),
    ({"qualified": "yes"}, "malformed"),
    ({}, "not PEM certificates"),  # a path that checks, and no certificates to check its token with
])
def test_a_hostile_token_file_fails_naming_its_record(changes, detail):
    with pytest.raises(BundleProblem) as failed:
        check_record_token(leaf_file(**changes), RECORD, DIGESTS[2].hex(), {})
    assert (failed.value.path, failed.value.check) == (RECORD, "RFC 3161 token")
    assert detail in failed.value.detail


def test_a_token_file_that_is_not_canonical_json_is_refused():
    files = leaf_file()
    files[RECORD + ".tsa.json"] = json.dumps(json.loads(files[RECORD + ".tsa.json"]), indent=1).encode()
    with pytest.raises(BundleProblem, match="canonical"):
        check_record_token(files, RECORD, DIGESTS[2].hex(), {})


def test_a_record_without_a_token_file_has_none():
    assert check_record_token({}, RECORD, DIGESTS[2].hex(), {}) is None


def test_garbage_is_not_a_token():
    with pytest.raises(TokenError, match="not an RFC 3161"):
        check_token(b"\x30\x03\x02\x01\x00", root=bytes(32), cas=())
