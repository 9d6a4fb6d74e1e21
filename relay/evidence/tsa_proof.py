"""A record's RFC 3161 token in a bundle: its path to the batch root, the token, the chain.

Pure: built from what the store gave (relay.anchor.worker.export_tsa), checked from the
bundle's files alone (relay.evidence.tsa_verify does the token itself). Layout, per record
``records/<type>-<digest>.json``::

    records/<type>-<digest>.json.tsa.json   {"chain", "nonce", "path", "qualified", "record", "root",
                                             "token", "trust_list", "tsa"} (canonical JSON)
    tsa/<root>.tsr                          the batch's TimeStampResp, DER, as received
    tsa/<root>.chain.pem                    its signing certificate, then the CAs it was checked against

ROOT = sha256(record_digest || nonce), then for each path step sha256(ROOT || sibling)
("append") or sha256(sibling || ROOT) ("prepend"): the Merkle path of the record's ``.ots``.
``openssl ts -verify -digest ROOT -in tsa/ROOT.tsr -CAfile tsa/ROOT.chain.pem`` checks the token.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from relay.evidence.archive import BundleProblem, load_json
from relay.evidence.records import canonical_json
from relay.evidence.tsa_verify import Token, TokenError, check_token, load_certificates

SUFFIX = ".tsa.json"
STEPS = ("append", "prepend")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


def token_path(root_hex: str) -> str:
    return f"tsa/{root_hex}.tsr"


def chain_path(root_hex: str) -> str:
    return f"tsa/{root_hex}.chain.pem"


@dataclass(frozen=True)
class TokenProof:
    """What a bundle carries for one record whose batch has a token."""

    record: str  # the record's digest, hex
    nonce: bytes
    path: tuple[tuple[str, bytes], ...]  # ("append" | "prepend", sibling)
    root: bytes
    authority: str  # as the operator named and declared it
    qualified: bool
    trust_list: str
    tsr: bytes
    chain_pem: bytes

    def files(self, record_path: str) -> dict[str, bytes]:
        root = self.root.hex()
        leaf = {
            "chain": chain_path(root),
            "nonce": self.nonce.hex(),
            "path": [[step, sibling.hex()] for step, sibling in self.path],
            "qualified": self.qualified,
            "record": self.record,
            "root": root,
            "token": token_path(root),
            "trust_list": self.trust_list,
            "tsa": self.authority,
        }
        return {record_path + SUFFIX: canonical_json(leaf), token_path(root): self.tsr, chain_path(root): self.chain_pem}


@dataclass(frozen=True)
class TSAOutcome:
    """A record's token, checked: the record existed no later than ``time``."""

    tsa: str  # the name the operator gave it
    qualified: bool  # as declared by the operator, not proven
    trust_list: str
    time: str  # the token's genTime, ISO 8601 UTC
    unix: float
    policy: str
    signer: str  # the signing certificate's subject
    ca_sha256: str  # the SHA-256 of the CA certificate the chain ends in: compare it with the trust list's
    token: str  # the token's path in the bundle

    def facts(self) -> dict[str, Any]:
        """What the manifest (and so the attestation) says of it."""
        return {"tsa": self.tsa, "qualified": self.qualified, "trust_list": self.trust_list, "time": self.time,
                "policy": self.policy, "signer": self.signer, "ca_sha256": self.ca_sha256}


def token_time(token: Token) -> str:
    return token.time.astimezone(UTC).isoformat().replace("+00:00", "Z")


def root_of(record_digest: bytes, nonce: bytes, path: list[tuple[str, bytes]]) -> bytes:
    node = hashlib.sha256(record_digest + nonce).digest()
    for step, sibling in path:
        node = hashlib.sha256(node + sibling if step == "append" else sibling + node).digest()
    return node


def check_record_token(
    files: dict[str, bytes], record_path: str, record_digest: str, checked: dict[str, tuple[Token, str]]
) -> TSAOutcome | None:
    """The record's token, checked from the bundle's files; None if it has none; BundleProblem naming the record.

    ``checked`` keeps each root's checked token (and its CA's SHA-256): a batch's records share it."""
    leaf_path = record_path + SUFFIX
    raw = files.get(leaf_path)
    if raw is None:
        return None
    leaf = load_json(leaf_path, raw)
    if not isinstance(leaf, dict) or canonical_json(leaf) != raw:
        raise BundleProblem(record_path, "RFC 3161 token", f"{leaf_path} is not canonical JSON")
    try:
        path = _path(leaf["path"])
        nonce, root = leaf["nonce"], leaf["root"]
        if leaf["record"] != record_digest or not (_HEX32.fullmatch(nonce) and _HEX64.fullmatch(root)):
            raise ValueError("its record, nonce or root is malformed or not this record's")
        if (leaf["token"], leaf["chain"]) != (token_path(root), chain_path(root)):
            raise ValueError("names a token or chain file of another root")
        name, qualified, trust_list = leaf["tsa"], leaf["qualified"], leaf["trust_list"]
        if not (isinstance(name, str) and type(qualified) is bool and isinstance(trust_list, str)):
            raise ValueError("its tsa, qualified or trust_list is malformed")
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleProblem(record_path, "RFC 3161 token", f"{leaf_path}: {exc}") from None
    computed = root_of(bytes.fromhex(record_digest), bytes.fromhex(nonce), path)
    if computed.hex() != root:
        raise BundleProblem(record_path, "RFC 3161 token", f"its path in {leaf_path} does not lead to the root {root}")
    tsr, chain = files.get(token_path(root)), files.get(chain_path(root))
    if tsr is None or chain is None:
        raise BundleProblem(record_path, "RFC 3161 token", f"{token_path(root)} or {chain_path(root)} is missing")
    if root not in checked:
        try:
            cas = load_certificates(chain)
            token = check_token(tsr, root=computed, cas=cas)
        except TokenError as exc:
            raise BundleProblem(record_path, "RFC 3161 token", f"{token_path(root)}: {exc}") from None
        anchors = [c for c in cas if c.issuer == c.subject]
        checked[root] = (token, hashlib.sha256(anchors[0].public_bytes(Encoding.DER)).hexdigest())
    token, ca_sha256 = checked[root]
    return TSAOutcome(name, qualified, trust_list, token_time(token), token.unix_time, token.policy, token.signer,
                      ca_sha256, token_path(root))


def _path(raw: Any) -> list[tuple[str, bytes]]:
    if not isinstance(raw, list) or not all(isinstance(s, list) and len(s) == 2 for s in raw):
        raise ValueError("its path is not a list of [step, sibling] pairs")
    steps = []
    for step, sibling in raw:
        if step not in STEPS or not isinstance(sibling, str) or not _HEX64.fullmatch(sibling):
            raise ValueError("a step of its path is malformed")
        steps.append((step, bytes.fromhex(sibling)))
    return steps

