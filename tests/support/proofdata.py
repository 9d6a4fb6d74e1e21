"""Synthetic, fully valid evidence for one message: signed copies, records, .ots proofs
anchored in a regtest block header mined here. For the proof model's unit tests and
the proof benchmark's pure half (the end-to-end test uses the real relay)."""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from opentimestamps.core.notary import BitcoinBlockHeaderAttestation, PendingAttestation
from opentimestamps.core.timestamp import Timestamp

from relay.anchor.merkle import Tree, leaf_ots
from relay.evidence import records
from relay.evidence.bundle import Anchoring, Evidence, ProofInput, RecipientEvidence, build_bundle
from relay.evidence.ots_verify import block_hash

DOMAIN = "mairie-exemple.fr"
HEIGHT = 101
BLOCK_TIME = 1_795_000_000
REGTEST_BITS = 0x207FFFFF
CALENDAR = "http://127.0.0.1:1/calendar"


@dataclass(frozen=True)
class Keys:
    rsa_pem: bytes
    rsa_public: str
    ed_seed: bytes
    ed_public: str

    @classmethod
    def generate(cls) -> Keys:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ed = ed25519.Ed25519PrivateKey.generate()
        return cls(
            rsa_pem=rsa_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            ),
            rsa_public=base64.b64encode(
                rsa_key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ).decode(),
            ed_seed=ed.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            ),
            ed_public=base64.b64encode(
                ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            ).decode(),
        )

    def evidence(self) -> list[dict[str, str]]:
        return [
            {"algorithm": "rsa-sha256", "domain": DOMAIN, "selector": "rsa", "public_key": self.rsa_public},
            {"algorithm": "ed25519-sha256", "domain": DOMAIN, "selector": "ed", "public_key": self.ed_public},
        ]

    def sign(self, message: bytes) -> bytes:
        headers = [b"from", b"to", b"subject", b"date", b"message-id"]
        ed = dkim.sign(message, b"ed", DOMAIN.encode(), base64.b64encode(self.ed_seed),
                       signature_algorithm=b"ed25519-sha256", include_headers=headers)
        rs = dkim.sign(message, b"rsa", DOMAIN.encode(), self.rsa_pem, include_headers=headers)
        return rs + ed + message


def original_message(recipients: list[str]) -> bytes:
    return (
        f"From: Mairie <convocations@{DOMAIN}>\r\nTo: {', '.join(recipients)}\r\n"
        "Subject: Convocation au conseil municipal\r\nDate: Sun, 29 Nov 2026 06:00:00 +0000\r\n"
        f"Message-ID: <conv-42@{DOMAIN}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Mesdames et Messieurs les conseillers,\r\nvous êtes convoqués le 3 décembre à 18 h.\r\n"
    ).encode()


def mine_header(merkle_root: bytes) -> bytes:
    """A regtest block header committing to ``merkle_root`` (internal byte order)."""
    for nonce in range(1 << 20):
        raw = (
            (1).to_bytes(4, "little") + bytes(32) + merkle_root + BLOCK_TIME.to_bytes(4, "little")
            + REGTEST_BITS.to_bytes(4, "little") + nonce.to_bytes(4, "little")
        )
        if int(block_hash(raw), 16) <= 0x7FFFFF << 8 * (0x20 - 3):
            return raw
    raise AssertionError("no nonce found")


@dataclass(frozen=True)
class Built:
    """A proof's input, the message files it names (by SHA-256) and the block headers it needs."""

    proof: ProofInput
    blobs: dict[str, bytes]
    headers: dict[int, bytes]

    def bundle(self) -> bytes:
        out = io.BytesIO()
        build_bundle(self.proof, self.blobs.__getitem__, out)
        return out.getvalue()


def build_input(
    n: int, keys: Keys, *, acknowledged: int = 1, confirmed: bool = True, ack_at: str = "2026-11-29T07:15:00.000000Z"
) -> Built:
    """A message to ``n`` recipients, all delivered, the first ``acknowledged`` of them acknowledged at ``ack_at``."""
    rcpts = [f"membre{i:03d}@exemple.net" for i in range(n)]
    original = original_message(rcpts)
    sub = records.submission_record(
        data_sha256=hashlib.sha256(original).hexdigest(), mail_from=f"convocations@{DOMAIN}", rcpt_to=rcpts,
        client_address="127.0.0.1", auth_user=None, tls=None, received_at="2026-11-29T06:00:01.000000Z",
        message_id=f"<conv-42@{DOMAIN}>", attachments=[],
    )
    per: list[tuple[str, bytes, records.Record, records.Record, records.Record | None]] = []
    for i, rcpt in enumerate(rcpts):
        copy = keys.sign(original.replace(b"\r\n\r\n", f"\r\n\r\nLien: https://t.example/a/tok{i}\r\n".encode(), 1))
        delivery = records.delivery_record(
            submission_digest=sub.digest, recipient=rcpt, copy_sha256=hashlib.sha256(copy).hexdigest(),
            dkim=keys.evidence(), ack_link_inserted=True, ack_link_reason=None, certified_at="2026-11-29T06:00:02.000000Z",
        )
        handoff = records.handoff_record(
            delivery_digest=delivery.digest, code=250, text="2.0.0 Ok: queued as ABC", queue_id="ABC",
            upstream_host="127.0.0.1", tls=None, handed_at="2026-11-29T06:00:03.000000Z",
        )
        ack = None
        if i < acknowledged:
            ack = records.receipt_record(
                delivery_digest=delivery.digest, kind="acknowledged", at=ack_at,
                ip_commitment="00" * 32, user_agent_commitment="11" * 32,
            )
        per.append((rcpt, copy, delivery, handoff, ack))
    all_records = [sub] + [r for p in per for r in p[2:] if r is not None]
    nonces = bytes(range(16)) * len(all_records)
    tree = Tree.build([bytes.fromhex(r.digest) for r in all_records], nonces)
    root = Timestamp(tree.root)
    headers: dict[int, bytes] = {}
    if confirmed:
        root.attestations.add(BitcoinBlockHeaderAttestation(HEIGHT))
        headers[HEIGHT] = mine_header(tree.root)
        anchoring = Anchoring("confirmed", (), HEIGHT, BLOCK_TIME)
    else:
        root.attestations.add(PendingAttestation(CALENDAR))
        anchoring = Anchoring("pending", (CALENDAR,))
    evidence = {
        r.digest: Evidence(r, leaf_ots(bytes.fromhex(r.digest), nonces[:16], tree.path(pos), root), anchoring)
        for pos, r in enumerate(all_records)
    }
    recipients = tuple(
        RecipientEvidence(
            recipient=rcpt, state="delivered", copy_sha256=hashlib.sha256(copy).hexdigest(),
            delivery=evidence[d.digest], handoff=evidence[h.digest],
            acknowledgment=evidence[a.digest] if a else None,
        )
        for rcpt, copy, d, h, a in per
    )
    proof = ProofInput(
        message_id=f"<conv-42@{DOMAIN}>", subject="Convocation au conseil municipal",
        original_sha256=hashlib.sha256(original).hexdigest(),
        submission=evidence[sub.digest], recipients=recipients, generated_at="2026-11-29T08:00:00.000000Z",
    )
    blobs = {hashlib.sha256(data).hexdigest(): data for data in [original] + [p[1] for p in per]}
    return Built(proof, blobs, headers)

