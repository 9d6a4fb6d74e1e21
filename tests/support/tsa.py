"""A local RFC 3161 time-stamping authority on 127.0.0.1: ``openssl ts -reply`` behind aiohttp.

    pki = TSAPki.make(tmp_path)                 # a CA and a TSA certificate (critical timeStamping EKU)
    async with LocalTSA(pki) as tsa:            # tsa.url; POST application/timestamp-query
        ...
    tsa.down = True                             # answers 503
    tsa.delay = 5.0                             # answers after 5 s
    tsa.fault = "imprint"                       # imprint, nonce, signature: a token wrong in that way
    rogue = TSAPki.make(tmp_path / "rogue")     # LocalTSA(rogue) signs under a CA the relay does not trust

The token is OpenSSL's own, signed by a key and chain made here with ``cryptography``;
a fault alters the query before OpenSSL answers it (imprint, nonce: still validly signed)
or the answer after (signature). ``requests`` counts the queries received.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

POLICY = "1.3.6.1.4.1.99999.1"
_CONFIG = """\
[tsa]
default_tsa = local
[local]
serial = {dir}/serial
signer_cert = {dir}/tsa.pem
signer_key = {dir}/tsa.key
signer_digest = sha256
default_policy = {policy}
digests = sha256
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")])


@dataclass(frozen=True)
class TSAPki:
    directory: Path

    @property
    def ca_pem(self) -> Path:
        return self.directory / "ca.pem"

    @classmethod
    def make(cls, directory: Path, name: str = "Estampille Test TSA") -> TSAPki:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key, tsa_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder().subject_name(_name(f"{name} CA")).issuer_name(_name(f"{name} CA"))
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        tsa = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca.subject)
            .public_key(tsa_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (directory / "tsa.pem").write_bytes(tsa.public_bytes(serialization.Encoding.PEM))
        (directory / "tsa.key").write_bytes(tsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (directory / "serial").write_text("01\n")
        (directory / "tsa.cnf").write_text(_CONFIG.format(dir=directory, policy=POLICY))
        return cls(directory)


class LocalTSA:
    """An RFC 3161 server on 127.0.0.1, port 0, answering with ``openssl ts -reply``."""

    def __init__(self, pki: TSAPki) -> None:
        self.pki = pki
        self.down = False
        self.fault = ""
        self.delay = 0.0  # seconds before answering (cut short when the server stops)
        self._stopping = asyncio.Event()
        self.requests = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()  # openssl's serial file is read and rewritten by each reply

    async def __aenter__(self) -> LocalTSA:
        app = web.Application()
        app.router.add_post("/", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.delay)
        if self.down:
            return web.Response(status=503, text="down")
        if request.content_type != "application/timestamp-query":
            return web.Response(status=415)
        query = _altered(await request.read(), self.fault)
        async with self._lock:
            reply = await _openssl_reply(self.pki.directory, query)
        if self.fault == "signature":
            reply = reply[:-1] + bytes([reply[-1] ^ 1])  # the last byte is the signature's
        return web.Response(body=reply, content_type="application/timestamp-reply")


def _altered(query: bytes, fault: str) -> bytes:
    request = _parse_query(query)
    if fault == "imprint":
        imprint = request.message_imprint.message
        return query.replace(imprint, bytes([imprint[0] ^ 1]) + imprint[1:])
    if fault == "nonce":
        nonce = request.nonce.to_bytes((request.nonce.bit_length() + 8) // 8, "big")
        return query.replace(nonce, nonce[:-1] + bytes([nonce[-1] ^ 1]))
    return query


def _parse_query(query: bytes):
    from rfc3161_client import _rust

    return _rust.parse_timestamp_request(query)


async def _openssl_reply(directory: Path, query: bytes) -> bytes:
    """OpenSSL's answer to ``query`` (files: openssl ts reads its query with seeks a pipe refuses)."""
    (directory / "query.tsq").write_bytes(query)
    proc = await asyncio.create_subprocess_exec(
        "openssl", "ts", "-reply", "-config", str(directory / "tsa.cnf"), "-queryfile", str(directory / "query.tsq"),
        "-out", str(directory / "reply.tsr"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"openssl ts -reply failed: {out.decode(errors='replace')}")
    return (directory / "reply.tsr").read_bytes()
