"""Checks on certified copies, shared by unit and integration tests: DKIM with three
independent verifiers (dkimpy, OpenDKIM, Mail::DKIM), the decoded text parts, the
acknowledgment tokens a copy carries.

Verifiers never touch the DNS: dkimpy gets an injected ``dnsfunc``, OpenDKIM a
TestPublicKeys file, Mail::DKIM a Net::DNS::Resolver::Mock zone (maildkim_verify.pl).
"""

from __future__ import annotations

import email
import re
import subprocess
from email import policy
from email.message import EmailMessage
from pathlib import Path

import dkim as dkimpy

from relay.certify import dkim
from relay.config import DKIMConfig
from tests.conftest import require_tool

PERL_VERIFIER = Path(__file__).with_name("maildkim_verify.pl")
TOOL_TIMEOUT = 60
TOKEN = re.compile(r"/a/([A-Za-z0-9_-]{22,})")


def make_keyring(directory: Path, domain: str = "ville-exemple.fr", **kw: object) -> dkim.Keyring:
    """A keyring with freshly generated RSA and Ed25519 keys for ``domain``."""
    entry = dkim.generate_keys(directory, domain, "rsa", "ed")
    return dkim.Keyring.from_config(DKIMConfig(domains=[entry], **kw))  # type: ignore[arg-type]


def dns_records(keyring: dkim.Keyring) -> dict[bytes, bytes]:
    return {
        f"{k.dns_name}.".encode(): k.dns_txt.encode()
        for keys in keyring.domains.values()
        for k in keys.keys
    }


def dkimpy_results(data: bytes, keyring: dkim.Keyring) -> dict[str, bool]:
    """{algorithm: verified} for each of our signatures, checked by dkimpy."""
    records = dns_records(keyring)
    ours = {k.selector for keys in keyring.domains.values() for k in keys.keys}
    out: dict[str, bool] = {}
    count = len(re.findall(rb"(?im)^dkim-signature:", data.split(b"\r\n\r\n", 1)[0]))
    for idx in range(count):
        verifier = dkimpy.DKIM(data)
        ok = verifier.verify(idx, dnsfunc=lambda name, timeout=5: records.get(name))
        if verifier.selector.decode() in ours:
            out[verifier.signature_fields[b"a"].decode()] = bool(ok)
    return out


def opendkim_results(data: bytes, keyring: dkim.Keyring, workdir: Path) -> dict[str, bool]:
    """{algorithm: passed} read from the Authentication-Results OpenDKIM's test mode would add."""
    opendkim = require_tool("opendkim")
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "TestPublicKeys"
    keys.write_text("".join(f"{name.decode()[:-1]} {txt.decode()}\n" for name, txt in dns_records(keyring).items()))
    conf = workdir / "opendkim.conf"
    conf.write_text(f"Mode v\nTestPublicKeys {keys}\nSyslog no\nAlwaysAddARHeader yes\nAuthservID test\n")
    message = workdir / "message.eml"
    message.write_bytes(data)
    # opendkim -t exits 0 whatever the verdict: the verdict is in its output.
    proc = subprocess.run(
        [opendkim, "-x", str(conf), "-t", str(message), "-vvv"], capture_output=True, timeout=TOOL_TIMEOUT
    )
    output = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    results: dict[str, bool] = {}
    for verdict, algorithm in re.findall(r"dkim=(\w+)[^;]*?header\.a=([\w-]+)", output):
        results[algorithm] = results.get(algorithm, False) or verdict == "pass"
    return results


def mail_dkim_results(data: bytes, keyring: dkim.Keyring, workdir: Path) -> dict[str, str]:
    """{algorithm: result} from Mail::DKIM for each of our signatures."""
    perl = require_tool("perl")
    workdir.mkdir(parents=True, exist_ok=True)
    zone = workdir / "zone"
    zone.write_text("".join(k.zone_line() + "\n" for keys in keyring.domains.values() for k in keys.keys))
    proc = subprocess.run(
        [perl, str(PERL_VERIFIER), str(zone)], input=data, capture_output=True, timeout=TOOL_TIMEOUT, check=True
    )
    ours = {(k.domain, k.selector) for keys in keyring.domains.values() for k in keys.keys}
    out: dict[str, str] = {}
    for line in proc.stdout.decode().splitlines():
        result, algorithm, domain, selector = line.split()
        if (domain, selector) in ours:
            out[algorithm] = result
    return out


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def text_parts(data: bytes) -> list[tuple[str, str]]:
    """(content type, decoded text) of every text/plain and text/html part shown as a body
    (no file name, or an inline one), outside signed, encrypted and forwarded parts."""
    out: list[tuple[str, str]] = []

    def walk(part: EmailMessage) -> None:
        ctype = part.get_content_type()
        if ctype in ("multipart/signed", "multipart/encrypted") or ctype.startswith("message/"):
            return
        if part.is_multipart():
            for sub in part.iter_parts():
                walk(sub)  # type: ignore[arg-type]
            return
        disposition = part.get_content_disposition()
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and (
            disposition == "inline" or not part.get_filename()
        ):
            try:
                out.append((ctype, part.get_content()))
            except LookupError:  # a charset Python does not know: read its octets as UTF-8
                out.append((ctype, part.get_payload(decode=True).decode("utf-8", "replace")))

    walk(parse(data))
    return out


def tokens_in(data: bytes) -> set[str]:
    """Every acknowledgment token in the copy's decoded text parts."""
    return {t for _, text in text_parts(data) for t in TOKEN.findall(text)}


def max_line_length(data: bytes) -> int:
    return max(len(line) for line in data.split(b"\r\n"))
