"""DKIM: the signing keys of each sending domain, and the two signatures
(RSA-2048 and Ed25519, RFC 8463) every certified copy carries.

Signatures are computed exactly as dkimpy computes them: its canonicalisation,
header selection and folding are reused, only the private-key operation goes
through OpenSSL (`cryptography`). RSA PKCS#1 v1.5 and Ed25519 are both
deterministic, so the result is byte for byte dkimpy's own signature (a unit
test compares them), about ten times faster for RSA than dkimpy's pure-Python
arithmetic.

Signing is pure: the time for ``t=`` is passed in. Loading keys from files and
generating them (`estampille dkim-keygen`, first start of `serve`) are the only
I/O here, kept in the classmethods and functions named for it.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import dkim as dkimpy
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim import canonicalization

from relay.config import Config, DKIMConfig, DKIMDomain
from relay.errors import DKIMKeyError

log = logging.getLogger("estampille.dkim")

RSA_BITS = 2048
FALLBACK_DOMAIN = "localhost.localdomain"  # when smtp.hostname is not a domain name
RSA_MIN_BITS = 1024  # receivers ignore shorter keys (RFC 8301)
RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
CANONICALIZATION = b"relaxed/relaxed"
# Signed whether present or not: signing an absent header forbids adding it later.
SIGNED_HEADERS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "reply-to",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
KEY_DIR_MODE = 0o700
KEY_FILE_MODE = 0o600
DNS_STRING_MAX = 255  # one character-string of a TXT record

_HEADER_NAME = b"DKIM-Signature"
_SIGNATURE_NAME = _HEADER_NAME.lower()  # as relaxed canonicalisation writes it
SIGNED_HEADERS_CACHED = 16  # header blocks whose signed part is kept: a message being sent to its recipients
_RELAXED = dkimpy.CanonicalizationPolicy.from_c_value(CANONICALIZATION)
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
# Whitespace runs that relaxed canonicalisation changes: any run with a tab, or two spaces or more.
# (dkimpy replaces every run, single spaces included, by a space: same result, 30x slower.)
_WSP_TO_COMPRESS = re.compile(rb"[\t ]*\t[\t ]*|  +")


@dataclass(frozen=True, eq=False)
class SigningKey:
    """One private key, with the domain and selector it signs for."""

    domain: str
    selector: str
    algorithm: str  # RSA or ED25519
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @classmethod
    def from_pem(cls, domain: str, selector: str, pem: bytes) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise DKIMKeyError(f"DKIM key for {selector}._domainkey.{domain} is not a PEM private key") from exc
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < RSA_MIN_BITS:
                raise DKIMKeyError(f"DKIM RSA key for {domain} has {key.key_size} bits; at least {RSA_MIN_BITS}")
            return cls(domain, selector, RSA, key)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(domain, selector, ED25519, key)
        raise DKIMKeyError(f"DKIM key for {domain} is neither RSA nor Ed25519")

    @classmethod
    def from_file(cls, domain: str, selector: str, path: str) -> SigningKey:
        if not path:
            raise DKIMKeyError(f"dkim.domains: no key file given for selector {selector!r} of {domain}")
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise DKIMKeyError(f"cannot read DKIM key {path}: {exc.strerror}") from exc
        return cls.from_pem(domain, selector, pem)

    @functools.cached_property
    def public_key(self) -> str:
        """The p= value published in DNS (RFC 6376 for RSA, RFC 8463 for Ed25519)."""
        pub = self.private_key.public_key()
        if self.algorithm == RSA:
            der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        else:
            der = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(der).decode("ascii")

    @property
    def key_type(self) -> str:
        return "rsa" if self.algorithm == RSA else "ed25519"

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dns_txt(self) -> str:
        return f"v=DKIM1; k={self.key_type}; p={self.public_key}"

    def zone_line(self) -> str:
        """The TXT record as a zone-file line, split into strings of at most 255 characters."""
        txt = self.dns_txt
        chunks = [txt[i : i + DNS_STRING_MAX] for i in range(0, len(txt), DNS_STRING_MAX)]
        return f'{self.dns_name}. IN TXT ( ' + " ".join(f'"{c}"' for c in chunks) + " )"

    def evidence(self) -> dict[str, str]:
        """What a delivery record keeps about this key: enough to verify without DNS, years later."""
        return {
            "algorithm": self.algorithm,
            "domain": self.domain,
            "selector": self.selector,
            "public_key": self.public_key,
        }

    def sign_digest(self, digest: bytes) -> bytes:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self.private_key.sign(digest)


@dataclass(frozen=True, eq=False)
class DomainKeys:
    """The RSA and the Ed25519 key of one signing domain."""

    domain: str
    rsa: SigningKey
    ed25519: SigningKey

    @classmethod
    def from_config(cls, entry: DKIMDomain) -> DomainKeys:
        rsa_key = SigningKey.from_file(entry.domain, entry.rsa_selector, entry.rsa_key)
        ed_key = SigningKey.from_file(entry.domain, entry.ed25519_selector, entry.ed25519_key)
        if rsa_key.algorithm != RSA or ed_key.algorithm != ED25519:
            raise DKIMKeyError(f"dkim.domains {entry.domain}: rsa_key must be RSA and ed25519_key Ed25519")
        return cls(entry.domain, rsa_key, ed_key)

    @property
    def keys(self) -> tuple[SigningKey, SigningKey]:
        return (self.rsa, self.ed25519)


@dataclass(frozen=True, eq=False)
class Keyring:
    """Every signing domain's keys, loaded once, and the rule for other sender domains."""

    domains: Mapping[str, DomainKeys]
    default_domain: str
    refuse_unknown: bool
    signed_headers: tuple[str, ...] = SIGNED_HEADERS

    @classmethod
    def from_config(cls, config: DKIMConfig) -> Keyring:
        if not config.domains:
            raise DKIMKeyError("no dkim.domains configured")
        domains = {d.domain.lower(): DomainKeys.from_config(d) for d in config.domains}
        default = (config.default_domain or config.domains[0].domain).lower()
        if default not in domains:
            raise DKIMKeyError(f"dkim.default_domain = {config.default_domain!r} has no [[dkim.domains]] entry")
        extra = tuple(h.lower() for h in config.extra_headers if h.lower() not in SIGNED_HEADERS)
        return cls(domains, default, config.unknown_domain == "refuse", SIGNED_HEADERS + extra)

    def for_addresses(self, addresses: Iterable[str]) -> DomainKeys:
        """The keys of the first address whose domain (or a parent domain) has keys.

        The From header's address comes first (DMARC aligns on it), then the envelope
        sender. Without a match: the default domain's keys, or refused, as configured.
        """
        for address in addresses:
            domain = signing_domain(self.domains, address)
            if domain is not None:
                return self.domains[domain]
        if self.refuse_unknown:
            raise DKIMKeyError("no DKIM key for the sender's domain (dkim.unknown_domain = 'refuse')")
        return self.domains[self.default_domain]


def signing_domain(domains: Iterable[str], address: str) -> str | None:
    """The domain among ``domains`` (lower-case) that signs for ``address``: its own, else a parent's."""
    known = set(domains)
    domain = address.rpartition("@")[2].lower().rstrip(".")
    while domain:
        if domain in known:
            return domain
        domain = domain.partition(".")[2]
    return None


def refuses_sender(config: DKIMConfig, address: str) -> bool:
    """Whether intake must refuse this envelope sender: dkim.unknown_domain = 'refuse' and no
    configured domain signs for it (the null sender of a bounce is never refused)."""
    if config.unknown_domain != "refuse" or not config.domains or address in ("", "<>"):
        return False
    return signing_domain((d.domain.lower() for d in config.domains), address) is None


def sign(message: bytes, keys: DomainKeys, signed_headers: Iterable[str], now: int) -> bytes:
    """``message`` (CRLF line endings) with an RSA and an Ed25519 DKIM-Signature prepended.

    Earlier signatures by the same domain and selectors are removed first.
    """
    message = strip_signatures(message, keys)
    head_end = header_end(message)
    body = message[head_end + 2 :] if head_end < len(message) else b""
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    include, signed = _signed_headers(message[:head_end], tuple(signed_headers))
    # Each signature covers the message without the other one (both are added last).
    fields = [_signature(signed, include, body_hash, key, now) for key in keys.keys]
    return b"".join(fields) + message


@functools.lru_cache(maxsize=SIGNED_HEADERS_CACHED)
def _signed_headers(block: bytes, signed_headers: tuple[str, ...]) -> tuple[tuple[bytes, ...], Any]:
    """The h= list of a header block, and a SHA-256 that has hashed the fields it selects, as
    dkimpy's hash_headers does before the DKIM-Signature field. Every recipient's copy of a
    message has the same header block: parsed, canonicalised and hashed once, then copied."""
    headers, _ = dkimpy.rfc822_parse(block)
    include = _include_list(headers, signed_headers)
    hasher = hashlib.sha256()
    for name, value in dkimpy.select_headers(_RELAXED.canonicalize_headers(headers), include):
        hasher.update(name + b":" + value)
    return tuple(include), hasher


def relaxed_body(body: bytes) -> bytes:
    """The relaxed body canonicalisation of RFC 6376 3.4.4, byte for byte dkimpy's (a test checks)."""
    if b" \r\n" in body or b"\t" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if b"  " in body or b"\t" in body:
        body = _WSP_TO_COMPRESS.sub(b" ", body)
    return cast(bytes, canonicalization.correct_empty_body(canonicalization.strip_trailing_lines(body)))


def strip_signatures(message: bytes, keys: DomainKeys) -> bytes:
    """Remove DKIM-Signature fields with our d= and one of our s= from the header block."""
    ours = {(keys.domain.lower().encode(), k.selector.encode()) for k in keys.keys}
    head_end = header_end(message)
    kept: list[bytes] = []
    removed = False
    for field in _header_fields(message[:head_end]):
        if field[:15].lower() == b"dkim-signature:":
            tags = _tags(field[15:])
            if (tags.get(b"d", b"").lower(), tags.get(b"s", b"")) in ours:
                removed = True
                continue
        kept.append(field)
    if not removed:
        return message
    return b"".join(kept) + message[head_end:]


def header_end(message: bytes) -> int:
    """Offset of the CRLF that ends the header block (the empty line), or len(message)."""
    if message.startswith(b"\r\n"):
        return 0
    pos = message.find(b"\r\n\r\n")
    return len(message) if pos < 0 else pos + 2


def _header_fields(block: bytes) -> list[bytes]:
    """The header block split into whole fields, continuation lines included, CRLFs kept."""
    if not block:
        return []
    return [f + b"\r\n" for f in re.split(rb"\r\n(?![ \t])", block.removesuffix(b"\r\n"))]


def _tags(value: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for item in value.split(b";"):
        name, sep, val = item.partition(b"=")
        if sep:
            out[name.strip()] = re.sub(rb"\s+", b"", val)
    return out


def _include_list(headers: list[list[bytes]], signed_headers: Iterable[str]) -> list[bytes]:
    """Each listed name once per occurrence (at least once), From once more (oversigned)."""
    present: dict[bytes, int] = {}
    for name, _ in headers:
        present[name.lower()] = present.get(name.lower(), 0) + 1
    include: list[bytes] = []
    for header in signed_headers:
        raw = header.lower().encode("ascii")
        include.extend([raw] * max(1, present.get(raw, 0)))
    return include + [b"from"]


def _signature(signed: Any, include: tuple[bytes, ...], body_hash: bytes, key: SigningKey, now: int) -> bytes:
    """One DKIM-Signature field, built the way dkimpy's DKIM.sign builds it; ``signed`` has
    hashed the selected header fields (_signed_headers)."""
    domain = key.domain.encode("ascii")
    fields = [
        (b"v", b"1"),
        (b"a", key.algorithm.encode("ascii")),
        (b"c", CANONICALIZATION),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(int(now)).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        (b"b", b"0" * 60),  # forces b= onto its own folded line, as dkimpy does
    ]
    value = dkimpy.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_HEADER_NAME), linesep=b"\r\n")
    hasher = signed.copy()
    # The field itself with b= empty, canonicalised (relaxed), without its trailing CRLF (RFC 6376
    # 3.7), as dkimpy's RE_BTAG and hash_headers make it: b= is the last tag, so everything after
    # its last "b=" goes; then unfolded, whitespace runs made one space, stripped.
    unsigned = value[: value.rfind(b"b=") + 2].replace(b"\r\n", b"")
    hasher.update(_SIGNATURE_NAME + b":" + _WSP_TO_COMPRESS.sub(b" ", unsigned).strip())
    fields[-1] = (b"b", base64.b64encode(key.sign_digest(hasher.digest())))
    value = dkimpy.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(_HEADER_NAME))
    return _HEADER_NAME + b": " + cast(bytes, value)


# -- key generation (I/O) ------------------------------------------------


def generate_keys(directory: Path, domain: str, rsa_selector: str, ed25519_selector: str) -> DKIMDomain:
    """Write a new RSA-2048 and Ed25519 key pair under ``directory`` (files mode 0600).

    Refuses to overwrite an existing key: a published selector must keep its key.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=KEY_DIR_MODE)
    rsa_path = directory / f"{domain}.{rsa_selector}.rsa.pem"
    ed_path = directory / f"{domain}.{ed25519_selector}.ed25519.pem"
    for path in (rsa_path, ed_path):
        if path.exists():
            raise DKIMKeyError(f"{path} already exists; choose another selector or remove it")
    pems = (
        (rsa_path, rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)),
        (ed_path, ed25519.Ed25519PrivateKey.generate()),
    )
    for path, key in pems:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(path, pem)
    return DKIMDomain(
        domain=domain,
        rsa_selector=rsa_selector,
        rsa_key=str(rsa_path),
        ed25519_selector=ed25519_selector,
        ed25519_key=str(ed_path),
    )


def keys_report(entry: DKIMDomain) -> str:
    """What to publish and what to configure for a generated key pair, as text for the operator."""
    keys = DomainKeys.from_config(entry)
    return "\n".join(
        [
            f"RSA-2048 key:  {entry.rsa_key}",
            f"Ed25519 key:   {entry.ed25519_key}",
            "",
            "Publish these two DNS TXT records:",
            *(k.zone_line() for k in keys.keys),
            "",
            "and add to the configuration:",
            "[[dkim.domains]]",
            f'domain = "{entry.domain}"',
            f'rsa_selector = "{entry.rsa_selector}"',
            f'rsa_key = "{entry.rsa_key}"',
            f'ed25519_selector = "{entry.ed25519_selector}"',
            f'ed25519_key = "{entry.ed25519_key}"',
        ]
    )


def _write_private(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise DKIMKeyError(f"cannot write DKIM key {path}: {exc.strerror}") from exc


def ensure_default_keys(data_dir: Path, domain: str) -> tuple[DKIMDomain, bool]:
    """The generated key pair under data_dir/dkim/, created on first start; (entry, created)."""
    directory = data_dir / "dkim"
    entry = DKIMDomain(
        domain=domain,
        rsa_key=str(directory / f"{domain}.rsa.rsa.pem"),
        ed25519_key=str(directory / f"{domain}.ed.ed25519.pem"),
    )
    if Path(entry.rsa_key).exists() and Path(entry.ed25519_key).exists():
        return entry, False
    return generate_keys(directory, domain, entry.rsa_selector, entry.ed25519_selector), True


def load_keyring(config: Config) -> Keyring:
    """The configured keys; with no [[dkim.domains]], a pair generated in data_dir/dkim/ on first start."""
    if config.dkim.domains:
        return Keyring.from_config(config.dkim)
    hostname = config.smtp.hostname.lower().rstrip(".")
    domain = hostname if "." in hostname else FALLBACK_DOMAIN
    entry, created = ensure_default_keys(config.data_path, domain)
    keyring = Keyring.from_config(dataclasses.replace(config.dkim, domains=[entry]))
    if created:
        log.warning("no [[dkim.domains]] configured: generated DKIM keys for %s\n%s", domain, keys_report(entry))
    else:
        log.info("no [[dkim.domains]] configured: signing as %s with the keys in %s", domain,
                 Path(entry.rsa_key).parent)
    return keyring
