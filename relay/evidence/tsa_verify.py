"""RFC 3161 time-stamp tokens over batch roots: making the request, checking the response.

Pure: no network, no clock (callers pass ``now``). Shared by the anchoring worker, which
checks a token before storing it, and by the offline verifier, which checks it again from
a bundle. The ASN.1 and the CMS signature are rfc3161-client's (a maintained library,
with its X.509 path building in Rust): nothing here parses DER by hand.

The token's message imprint is the batch's Merkle root itself. rfc3161-client hashes the
data it is given, so it is given the root's preimage: the two 32-byte nodes below the root
(or, for a batch of one leaf, the record digest and its nonce), whose SHA-256 *is* the root
(merkle.Tree). ``openssl ts -verify -digest ROOT`` then checks the token against ROOT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import rfc3161_client
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from relay.errors import VerificationError

SHA256_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
MAX_TOKEN_BYTES = 64 * 1024  # a token with a chain of a few certificates is 3 to 10 KB


class TokenError(VerificationError):
    """A time-stamp response was refused: the message names the check that failed."""


@dataclass(frozen=True)
class TokenRequest:
    """A request for a token over ``root``: its DER bytes and the nonce the answer must carry."""

    der: bytes
    nonce: int
    root: bytes

    @classmethod
    def for_root(cls, preimage: bytes) -> TokenRequest:
        """The request (SHA-256, a random nonce from the library, certReq) for the root ``sha256(preimage)``."""
        request = rfc3161_client.TimestampRequestBuilder(
            data=preimage, hash_algorithm=rfc3161_client.HashAlgorithm.SHA256, nonce=True, cert_req=True
        ).build()
        root = hashlib.sha256(preimage).digest()
        if request.message_imprint.message != root or request.nonce is None:
            raise ValueError("rfc3161-client built a request for another imprint")  # a library change, caught here
        return cls(request.as_bytes(), request.nonce, root)


@dataclass(frozen=True)
class Token:
    """A checked token: what it says, and the certificates that let a third party check it again."""

    tsr: bytes  # the TimeStampResp as received, DER
    time: datetime  # genTime, UTC
    signer: str  # the signing certificate's subject (RFC 4514)
    policy: str
    serial: int
    chain_pem: bytes  # the signing certificate, then the CA certificates it was checked against

    @property
    def unix_time(self) -> float:
        return self.time.timestamp()


def load_certificates(pem: bytes) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM file; TokenError if there are none or one is malformed."""
    try:
        certs = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise TokenError(f"certificates: not PEM certificates ({exc})") from exc
    return certs


def check_token(
    tsr: bytes,
    *,
    root: bytes,
    cas: Sequence[x509.Certificate],
    nonce: int | None = None,
    policy: str = "",
) -> Token:
    """Check a time-stamp response over ``root`` and return it as a Token; TokenError otherwise.

    Checks the status, the imprint (SHA-256, equal to ``root``), the nonce when given, the
    policy when given, the CMS signature, the signer's chain up to one of ``cas`` at the
    token's time, and the signer's critical ``timeStamping`` extended key usage.
    """
    if len(tsr) > MAX_TOKEN_BYTES:
        raise TokenError(f"token: larger than {MAX_TOKEN_BYTES} bytes")
    try:
        response = rfc3161_client.decode_timestamp_response(tsr)
        status = response.status
        info = response.tst_info
    except ValueError as exc:
        raise TokenError(f"token: not an RFC 3161 time-stamp response ({exc})") from exc
    if status not in (rfc3161_client.PKIStatus.GRANTED, rfc3161_client.PKIStatus.GRANTED_WITH_MODS):
        raise TokenError(f"status: the TSA refused ({status}: {'; '.join(response.status_string)})")
    if info.message_imprint.hash_algorithm != SHA256_OID:
        raise TokenError(f"imprint: {info.message_imprint.hash_algorithm.dotted_string}, expected SHA-256")
    if info.message_imprint.message != root:
        raise TokenError(f"imprint: the token stamps {info.message_imprint.message.hex()}, not the root {root.hex()}")
    if nonce is not None and info.nonce != nonce:
        raise TokenError("nonce: the token does not carry the nonce of our request")
    if policy and info.policy.dotted_string != policy:
        raise TokenError(f"policy: {info.policy.dotted_string}, expected {policy}")
    roots = [c for c in cas if c.issuer == c.subject]
    if not roots:
        raise TokenError("chain: no self-signed CA certificate to check the token against")
    builder = rfc3161_client.VerifierBuilder(roots=roots, intermediates=[c for c in cas if c.issuer != c.subject])
    try:
        builder.build().verify(response, root)
    except rfc3161_client.VerificationError as exc:
        raise TokenError(f"signature or chain: {exc}") from exc
    signer = _signer(response)
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (signer, *cas))
    return Token(tsr, info.gen_time, signer.subject.rfc4514_string(), info.policy.dotted_string,
                 info.serial_number, chain)


def _signer(response: rfc3161_client.TimeStampResponse) -> x509.Certificate:
    """The certificate the SignerInfo names (the library checked that exactly one does)."""
    (info,) = response.signed_data.signer_infos
    for der in response.signed_data.certificates:
        cert = x509.load_der_x509_certificate(der)
        if cert.issuer == info.issuer and cert.serial_number == info.serial_number:
            return cert
    raise TokenError("chain: the token carries no signing certificate")


def check_time(token: Token, now: float, max_skew: float) -> None:
    """TokenError unless the token's time is within ``max_skew`` seconds of ``now``."""
    skew = token.unix_time - now
    if abs(skew) > max_skew:
        raise TokenError(f"time: the token says {token.time.isoformat()}, {skew:+.0f} s from ours (at most {max_skew:.0f})")
