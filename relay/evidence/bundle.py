"""The proof model: a self-contained zip bundle proving what happened to one message.

Pure: everything is passed in (the evidence gathered by the store at the edge,
the time of generation); nothing here reads the clock, the network or the
database. The same module reads a bundle back for the verifier.

Layout of a bundle::

    manifest.json              format, version, facts, every other file with its SHA-256
    attestation.html           printable attestation (French)
    VERIFY.md                  how to verify, with the commands
    message/original.eml       the DATA bytes as received
    copies/NN-<recipient>.eml  each recipient's certified copy, as sent
    records/<type>-<digest>.json      every evidence record (canonical JSON)
    records/<type>-<digest>.json.ots  its OpenTimestamps proof, once batched
    keys/<selector>._domainkey.<domain>.txt   the DKIM public keys used (DNS TXT value)

Integrity vs. trust: the manifest lists every file's SHA-256 and carries a
checksum of its own content, so a damaged file (the manifest included) is named
precisely. Trust comes from the anchored records, not from the manifest: the
verifier checks each copy against its delivery record, each record against its
``.ots``, and each ``.ots`` against Bitcoin.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

import jinja2

from relay.errors import VerificationError
from relay.evidence.records import Record, canonical_json, sha256_hex

FORMAT = "estampille-proof"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ATTESTATION = "attestation.html"
VERIFY_DOC = "VERIFY.md"
ORIGINAL = "message/original.eml"
MAX_BUNDLE_FILES = 100_000  # a bundle lists records for each recipient; refuse zip bombs beyond this
MAX_BUNDLE_BYTES = 4 * 2**30  # total uncompressed size read back from a zip
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the zip format cannot store earlier dates
ANCHOR_STATES = ("queued", "pending", "confirmed")

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._@+-]")
_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("relay.evidence", "templates"),
    autoescape=jinja2.select_autoescape(("html",), default=False),  # VERIFY.md is Markdown: escaping garbles it
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


# -- the evidence passed in ------------------------------------------------


@dataclass(frozen=True)
class Anchoring:
    """Where a record's anchoring stands when the bundle is built."""

    state: str  # one of ANCHOR_STATES: queued (not batched yet), pending, confirmed
    calendars: tuple[str, ...] = ()
    bitcoin_height: int | None = None
    block_time: int | None = None  # Unix time of the block


@dataclass(frozen=True)
class Evidence:
    """One evidence record, its standalone .ots proof (None until batched) and anchoring state."""

    record: Record
    ots: bytes | None
    anchoring: Anchoring


@dataclass(frozen=True)
class RecipientEvidence:
    recipient: str
    state: str  # the delivery's state: queued, sending, deferred, delivered, failed
    copy_sha256: str | None  # the certified copy sent (a message file), None before certification
    delivery: Evidence | None
    handoff: Evidence | None
    acknowledgment: Evidence | None
    fetches: tuple[Evidence, ...] = ()
    earlier_handoffs: tuple[Evidence, ...] = ()  # answers to earlier attempts (4xx), oldest first


@dataclass(frozen=True)
class ProofInput:
    """Everything a bundle holds, gathered from the store by the caller."""

    message_id: str
    subject: str | None
    original_sha256: str  # the DATA bytes received (a message file)
    submission: Evidence
    recipients: tuple[RecipientEvidence, ...]
    generated_at: str  # ISO 8601 UTC
    timezone: str = "Europe/Paris"


@dataclass(frozen=True)
class DKIMKey:
    """A DKIM public key as published in DNS, keyed by its selector and domain."""

    domain: str
    selector: str
    txt: str  # the TXT record value: "v=DKIM1; k=...; p=..."

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def path(self) -> str:
        return f"keys/{self.dns_name}.txt"

    @classmethod
    def from_record_entry(cls, entry: dict[str, Any]) -> "DKIMKey":
        """The key a delivery record's ``dkim`` entry commits to."""
        kind = "ed25519" if "ed25519" in str(entry.get("algorithm", "")) else "rsa"
        txt = f"v=DKIM1; k={kind}; p={entry['public_key']}"
        return cls(domain=str(entry["domain"]).lower(), selector=str(entry["selector"]), txt=txt)


def dkim_keys_of(delivery: Record) -> list[DKIMKey]:
    return [DKIMKey.from_record_entry(e) for e in delivery.fields.get("dkim", [])]


# -- building --------------------------------------------------------------


def record_path(record: Record) -> str:
    return f"records/{record.type}-{record.digest}.json"


def copy_path(index: int, recipient: str) -> str:
    return f"copies/{index:02d}-{_SAFE_NAME.sub('_', recipient)}.eml"


def build_bundle(proof: ProofInput, read_blob: Callable[[str], bytes], out: BinaryIO) -> None:
    """Write the zip bundle for ``proof`` to ``out``, deterministically for the same input.

    Message files (the original and the copies, possibly megabytes each) are read
    through ``read_blob(sha256)`` one at a time and written straight to the zip,
    so memory holds one of them at a time, not the whole bundle.
    """
    blobs: dict[str, str] = {ORIGINAL: proof.original_sha256}  # path -> SHA-256 of a message file
    files: dict[str, bytes] = _evidence_files(proof.submission)  # everything small
    recipients = []
    for index, r in enumerate(proof.recipients, start=1):
        entry: dict[str, Any] = {"recipient": r.recipient, "state": r.state, "copy": None}
        if r.copy_sha256 is not None:
            entry["copy"] = copy_path(index, r.recipient)
            blobs[entry["copy"]] = r.copy_sha256
        for role in ("delivery", "handoff", "acknowledgment"):
            ev: Evidence | None = getattr(r, role)
            entry[role] = None if ev is None else record_path(ev.record)
            if ev is not None:
                files.update(_evidence_files(ev))
        for role in ("fetches", "earlier_handoffs"):
            entry[role] = [record_path(ev.record) for ev in getattr(r, role)]
            for ev in getattr(r, role):
                files.update(_evidence_files(ev))
        if r.delivery is not None:
            for key in dkim_keys_of(r.delivery.record):
                files[key.path] = key.txt.encode("ascii") + b"\n"
        recipients.append(entry)
    facts = {
        "message_id": proof.message_id,
        "subject": proof.subject,
        "generated_at": proof.generated_at,
        "timezone": proof.timezone,
        "submission": record_path(proof.submission.record),
        "original": ORIGINAL,
        "recipients": recipients,
        "anchoring": _anchoring_facts(proof),
    }
    files[ATTESTATION] = render_attestation(facts, files).encode("utf-8")
    files[VERIFY_DOC] = render_verify_doc(proof.message_id).encode("utf-8")
    stamp = max(ZIP_EPOCH, _parse_time(proof.generated_at).timetuple()[:6])
    listing: dict[str, tuple[str, int]] = {}
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path, sha256 in sorted(blobs.items()):
            data = read_blob(sha256)
            if sha256_hex(data) != sha256:
                raise ValueError(f"message file {sha256} does not have the content its name says")
            listing[path] = _add(zf, path, data, stamp)
        for path, data in sorted(files.items()):
            listing[path] = _add(zf, path, data, stamp)
        _add(zf, MANIFEST, make_manifest(facts, listing), stamp)


def _add(zf: zipfile.ZipFile, path: str, data: bytes, stamp: tuple[int, ...]) -> tuple[str, int]:
    """Add one file with a fixed date and mode (deterministic bytes); its (SHA-256, size)."""
    info = zipfile.ZipInfo(path, date_time=stamp)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)
    return sha256_hex(data), len(data)


def _evidence_files(ev: Evidence) -> dict[str, bytes]:
    path = record_path(ev.record)
    out = {path: ev.record.body}
    if ev.ots is not None:
        out[path + ".ots"] = ev.ots
    return out


def _anchoring_facts(proof: ProofInput) -> dict[str, dict[str, Any]]:
    """Each record's anchoring state at generation time, keyed by its path."""
    evidences = [proof.submission]
    for r in proof.recipients:
        evidences += [e for e in (r.delivery, r.handoff, r.acknowledgment) if e is not None]
        evidences += [*r.fetches, *r.earlier_handoffs]
    out = {}
    for ev in evidences:
        a = ev.anchoring
        out[record_path(ev.record)] = {
            "state": a.state,
            "calendars": list(a.calendars),
            "bitcoin_height": a.bitcoin_height,
            "block_time": a.block_time,
        }
    return out


def make_manifest(facts: dict[str, Any], listing: dict[str, tuple[str, int]]) -> bytes:
    """Canonical JSON listing every file's (SHA-256, size), with a checksum of its own content."""
    body = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "facts": facts,
        "files": [{"path": p, "sha256": sha, "size": size} for p, (sha, size) in sorted(listing.items())],
    }
    return canonical_json({**body, "checksum": sha256_hex(canonical_json(body))})


# -- human-readable documents ----------------------------------------------


def _parse_time(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def local_time(iso: str | None, tz: str) -> str:
    """An ISO UTC time shown as a French reader expects it, in the given zone."""
    if not iso:
        return ""
    return _parse_time(iso).astimezone(ZoneInfo(tz)).strftime("%d/%m/%Y %H:%M:%S")


def block_time_text(unix: int | None, tz: str) -> str:
    if unix is None:
        return ""
    return datetime.fromtimestamp(unix, tz=ZoneInfo(tz)).strftime("%d/%m/%Y %H:%M:%S")


def render_attestation(facts: dict[str, Any], files: dict[str, bytes]) -> str:
    """The printable attestation (French): a rendering of the facts and the records."""
    tz = facts["timezone"]

    def record(path: str | None) -> dict[str, Any] | None:
        return None if path is None else json.loads(files[path])

    submission = record(facts["submission"])
    rows = []
    for r in facts["recipients"]:
        rows.append(
            {
                "recipient": r["recipient"],
                "state": r["state"],
                "delivery": record(r["delivery"]),
                "handoff": record(r["handoff"]),
                "earlier": [record(path) for path in r["earlier_handoffs"]],
                "ack": record(r["acknowledgment"]),
                "fetches": len(r["fetches"]),
            }
        )
    states = [a["state"] for a in facts["anchoring"].values()]
    confirmed = [a for a in facts["anchoring"].values() if a["state"] == "confirmed"]
    return _templates.get_template("attestation.html").render(
        facts=facts,
        submission=submission,
        rows=rows,
        acknowledged=sum(1 for r in rows if r["ack"]),
        anchored=states.count("confirmed"),
        total_records=len(states),
        heights=sorted({a["bitcoin_height"] for a in confirmed}),
        block_times=sorted({block_time_text(a["block_time"], tz) for a in confirmed if a["block_time"] is not None}),
        local_time=lambda iso: local_time(iso, tz),
    )


def render_verify_doc(message_id: str) -> str:
    return _templates.get_template("VERIFY.md").render(message_id=message_id)


# -- reading a bundle back -------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A bundle's files, read back; ``manifest`` is parsed but not trusted."""

    files: dict[str, bytes]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def facts(self) -> dict[str, Any]:
        return self.manifest["facts"]


class BundleProblem(VerificationError):
    """A bundle file fails a check; ``path`` names the file and ``check`` the check."""

    def __init__(self, path: str, check: str, detail: str) -> None:
        super().__init__(f"{path}: {check}: {detail}")
        self.path = path
        self.check = check
        self.detail = detail


# What zipfile raises on damaged archives (a flipped bit can hit a header, a method, the deflate stream).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError)


def read_zip(data: bytes, name: str = "bundle.zip") -> dict[str, bytes]:
    """The files of a zip bundle, refusing archives that are corrupt or far too large."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > MAX_BUNDLE_FILES or sum(i.file_size for i in infos) > MAX_BUNDLE_BYTES:
                raise BundleProblem(name, "archive", "too many files or too large to be a proof bundle")
            files = {}
            for info in infos:
                try:
                    files[info.filename] = zf.read(info)
                except _ZIP_ERRORS as exc:
                    raise BundleProblem(info.filename, "archive", f"cannot be read from the zip ({exc})") from exc
            return files
    except _ZIP_ERRORS as exc:
        raise BundleProblem(name, "archive", f"not a readable zip file ({exc})") from exc


def parse_manifest(files: dict[str, bytes]) -> Bundle:
    """Check the manifest's own integrity and that every file matches it."""
    raw = files.get(MANIFEST)
    if raw is None:
        raise BundleProblem(MANIFEST, "manifest", "missing")
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleProblem(MANIFEST, "manifest", f"not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or canonical_json(manifest) != raw:
        raise BundleProblem(MANIFEST, "manifest", "not in canonical form")
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    if manifest.get("checksum") != sha256_hex(canonical_json(body)):
        raise BundleProblem(MANIFEST, "manifest checksum", "its content does not match its checksum")
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise BundleProblem(MANIFEST, "format", "not an Estampille proof bundle of a known version")
    listed = {entry["path"]: entry for entry in manifest["files"]}
    for path in sorted(set(files) - set(listed) - {MANIFEST}):
        raise BundleProblem(path, "manifest", "file not listed in manifest.json")
    for path, entry in listed.items():
        if path not in files:
            raise BundleProblem(path, "manifest", "listed in manifest.json but missing from the bundle")
        if hashlib.sha256(files[path]).hexdigest() != entry["sha256"] or len(files[path]) != entry["size"]:
            raise BundleProblem(path, "sha256", "content differs from the SHA-256 in manifest.json")
    return Bundle(files=files, manifest=manifest)
