"""Offline verification of a proof bundle (see relay.evidence.bundle for its layout).

Pure: the bundle's bytes come in, and so does a mapping of the Bitcoin block
headers its ``.ots`` proofs need, by height (``relay.evidence.gather`` fetches them
from a header source as they are asked for). Each proof is checked by ``relay.anchor.ots_verify``.
No DNS: DKIM signatures are checked against the keys in the bundle, which must
be the keys the anchored delivery records name.

``attestation.html`` and ``VERIFY.md`` are checked against the manifest like
every file, but not re-rendered: they are what the release that built the
bundle wrote, and a bundle must verify years later with any later release. The
verifier's report, made from the anchored records, is what counts.

A record's own time (``received_at``, ``certified_at``, ``handed_at``, ``at``) is
only what it says. Its anchor proves that it existed no later than the earliest
block time among its attestations: the verifier reports both, and a record whose
anchor proves it only more than ``max_anchor_delay`` seconds after its claim
(default 48 h: calendars take hours to reach a block, days when fees are high)
fails, since nothing then bounds when it was really written.

Outcome: ``verified`` (everything checks and every record is anchored in
Bitcoin), ``pending`` (valid, but some anchors still wait for a block) or
``invalid`` (the first failed check, naming the file and the check).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import dkim

from relay.anchor.ots_verify import verify_ots
from relay.evidence.bundle import (
    MANIFEST,
    Bundle,
    BundleProblem,
    DKIMKey,
    parse_manifest,
    record_path,
)
from relay.evidence.records import Record, sha256_hex

EXIT_VERIFIED = 0
EXIT_PENDING = 1
EXIT_INVALID = 2
DEFAULT_MAX_ANCHOR_DELAY = 48 * 3600  # seconds; see the module docstring
CLAIMED_TIME = {"submission": "received_at", "delivery": "certified_at", "handoff": "handed_at", "receipt": "at"}


@dataclass(frozen=True)
class AnchorOutcome:
    """What one .ots proof established: confirmed at a height, or pending at calendars."""

    state: str  # "confirmed" or "pending"
    bitcoin_height: int | None = None
    block_time: int | None = None
    calendars: tuple[str, ...] = ()


Headers = Mapping[int, bytes]  # height -> raw 80-byte block header


@dataclass(frozen=True)
class RecordCheck:
    path: str
    type: str
    digest: str
    anchor: AnchorOutcome
    claimed_at: str | None = None  # the record's own time, as it says

    @property
    def proven_text(self) -> str:
        """When the anchor proves the record existed by, for people."""
        if self.anchor.block_time is None:
            return "not yet proven (anchor pending)"
        return f"{_utc(self.anchor.block_time)} (Bitcoin block {self.anchor.bitcoin_height})"


@dataclass(frozen=True)
class RecipientSummary:
    recipient: str
    sent_at: str | None
    handed_at: str | None
    reply: str | None
    delivered: bool
    earlier_answers: tuple[str, ...]  # the upstream's answers to earlier attempts, oldest first
    acknowledged_at: str | None
    fetches: int
    dkim: tuple[str, ...]
    acknowledgment: str | None = None  # the receipt record's path


@dataclass(frozen=True)
class BundleReport:
    message_id: str | None
    subject: str | None
    received_at: str | None
    recipients: tuple[RecipientSummary, ...]
    records: tuple[RecordCheck, ...]
    problem: BundleProblem | None

    @property
    def status(self) -> str:
        if self.problem is not None:
            return "invalid"
        if any(r.anchor.state != "confirmed" for r in self.records):
            return "pending"
        return "verified"

    @property
    def exit_code(self) -> int:
        return {"verified": EXIT_VERIFIED, "pending": EXIT_PENDING, "invalid": EXIT_INVALID}[self.status]

    def to_json(self) -> dict[str, Any]:
        problem = None
        if self.problem is not None:
            problem = {"file": self.problem.path, "check": self.problem.check, "detail": self.problem.detail}
        return {
            "status": self.status,
            "message_id": self.message_id,
            "subject": self.subject,
            "received_at": self.received_at,
            "problem": problem,
            "recipients": [asdict(r) for r in self.recipients],
            "records": [{**asdict(r), "proven_at": _utc(r.anchor.block_time) if r.anchor.block_time else None}
                        for r in self.records],
        }

    def summary(self) -> str:
        """A report a person reads: one block per recipient, then the anchors."""
        if self.problem is not None:
            return f"INVALID: {self.problem.path}: {self.problem.check} failed: {self.problem.detail}"
        lines = [f"Message {self.message_id}" + (f" ({self.subject})" if self.subject else "")]
        lines.append(f"  received {self.received_at}; {len(self.recipients)} recipient(s)")
        checks = {r.path: r for r in self.records}
        for r in self.recipients:
            lines.append(f"- {r.recipient}")
            lines.append(f"    sent:         {r.sent_at or 'not yet certified'}")
            lines.append(f"    handed over:  {r.handed_at or 'not yet'}" + (f" ({r.reply})" if r.reply else ""))
            for answer in r.earlier_answers:
                lines.append(f"    earlier:      {answer}")
            lines.append(f"    delivered:    {'yes' if r.delivered else 'no'}")
            lines.append(f"    acknowledged: {r.acknowledged_at or 'no'}" + (f"; link fetched {r.fetches}x" if r.fetches else ""))
            if r.acknowledgment in checks:
                lines.append(f"      proven by:  {checks[r.acknowledgment].proven_text}")
            lines.append(f"    DKIM:         {', '.join(r.dkim) or 'no signature checked'}")
        confirmed = [r.anchor for r in self.records if r.anchor.state == "confirmed"]
        anchors = f"Anchors: {len(confirmed)} of {len(self.records)} records confirmed in Bitcoin"
        if confirmed:
            heights = ", ".join(str(h) for h in sorted({a.bitcoin_height for a in confirmed}))
            first = min(a.block_time for a in confirmed if a.block_time is not None)
            anchors += f" (block {heights}, the earliest {_utc(first)})"
        lines.append(anchors)
        lines.append("Each record: the time it claims; the time its anchor proves it existed by")
        for r in self.records:
            lines.append(f"  {r.type:<10} {r.path}: claims {r.claimed_at or '?'}; existed by {r.proven_text}")
        for r in self.records:
            if r.anchor.state != "confirmed":
                where = ", ".join(r.anchor.calendars) or "not yet submitted"
                lines.append(f"  pending: {r.path} ({where})")
        lines.append({"verified": "VERIFIED", "pending": "VALID, ANCHORS PENDING: verify again later"}[self.status])
        return "\n".join(lines)


def verify_files(
    files: dict[str, bytes], headers: Headers, *, regtest: bool = False,
    max_anchor_delay: float = DEFAULT_MAX_ANCHOR_DELAY,
) -> BundleReport:
    """Verify a bundle given as its files (path -> bytes), from a zip or an unpacked directory.

    A record whose anchor proves it existed only more than ``max_anchor_delay`` seconds after the
    time it claims is invalid (see the module docstring).
    """
    try:
        bundle = parse_manifest(files)
        return _verify(bundle, headers, regtest, max_anchor_delay)
    except BundleProblem as problem:
        return _invalid(problem)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # Only a manifest written by hand (its checksum recomputed) can miss facts.
        return _invalid(BundleProblem(MANIFEST, "facts", f"incomplete or malformed ({exc!r})"))


def _invalid(problem: BundleProblem) -> BundleReport:
    return BundleReport(None, None, None, (), (), problem)


def _verify(bundle: Bundle, headers: Headers, regtest: bool, max_anchor_delay: float) -> BundleReport:
    facts = bundle.facts
    submission = _record(bundle, facts["submission"], "submission")
    fields = submission.fields
    if sha256_hex(bundle.files[facts["original"]]) != fields["data_sha256"]:
        raise BundleProblem(facts["original"], "submission digest", "differs from data_sha256 in the submission record")
    if fields.get("message_id") != facts["message_id"]:
        raise BundleProblem(facts["submission"], "message id", "the record names another Message-ID")
    named = [entry["recipient"] for entry in facts["recipients"]]
    if len(named) != len(set(named)) or set(named) != set(fields["rcpt_to"]):
        # Leaving a recipient out would hide what happened to them: the record lists them all.
        raise BundleProblem(MANIFEST, "recipients", "does not list each recipient of the submission record once")
    paths = [facts["submission"]]
    recipients = []
    for entry in facts["recipients"]:
        summary, used = _verify_recipient(bundle, entry, submission)
        recipients.append(summary)
        paths += used
    records = tuple(_bounded(_anchor(bundle, path, headers, regtest), max_anchor_delay) for path in paths)
    return BundleReport(
        message_id=facts["message_id"],
        subject=facts.get("subject"),
        received_at=fields.get("received_at"),
        recipients=tuple(recipients),
        records=records,
        problem=None,
    )


def _record(bundle: Bundle, path: str, kind: str) -> Record:
    """A record file, canonical, of the expected type, stored under its own digest."""
    try:
        record = Record.from_bytes(bundle.files[path])
    except (KeyError, ValueError) as exc:
        raise BundleProblem(path, "record", f"not a canonical evidence record ({exc})") from exc
    if record.type != kind or record_path(record) != path:
        raise BundleProblem(path, "record digest", f"not the {kind} record its name says")
    return record


def _verify_recipient(bundle: Bundle, entry: dict[str, Any], submission: Record) -> tuple[RecipientSummary, list[str]]:
    recipient = entry["recipient"]
    used: list[str] = []
    delivery = handoff = ack = None
    dkim_results: tuple[str, ...] = ()
    if entry["delivery"] is not None:
        delivery = _record(bundle, entry["delivery"], "delivery")
        used.append(entry["delivery"])
        d = delivery.fields
        if d["submission"] != submission.digest:
            raise BundleProblem(entry["delivery"], "chain", "does not name the submission record")
        if d["recipient"] != recipient or recipient not in submission.fields["rcpt_to"]:
            raise BundleProblem(entry["delivery"], "recipient", f"is not the delivery to {recipient}")
        if entry["copy"] is not None:
            dkim_results = _verify_copy(bundle, entry["copy"], delivery)
    elif entry["copy"] is not None:
        raise BundleProblem(entry["copy"], "chain", "a copy without its delivery record")
    if entry["handoff"] is not None:
        handoff = _chained(bundle, entry["handoff"], "handoff", delivery)
        used.append(entry["handoff"])
    if entry["acknowledgment"] is not None:
        ack = _chained(bundle, entry["acknowledgment"], "receipt", delivery)
        if ack.fields["kind"] != "acknowledged":
            raise BundleProblem(entry["acknowledgment"], "receipt", "is not an acknowledgment")
        used.append(entry["acknowledgment"])
    for path in entry["fetches"]:
        _chained(bundle, path, "receipt", delivery)
        used.append(path)
    earlier = entry.get("earlier_handoffs", [])  # absent from bundles made before they were included
    for path in earlier:
        _chained(bundle, path, "handoff", delivery)
        used.append(path)
    h = handoff.fields if handoff else {}
    summary = RecipientSummary(
        recipient=recipient,
        sent_at=delivery.fields["certified_at"] if delivery else None,
        handed_at=h.get("handed_at"),
        reply=_answer(h) if h else None,
        delivered=bool(h) and 200 <= int(h["code"]) < 300,
        earlier_answers=tuple(_answer(_record(bundle, path, "handoff").fields) for path in earlier),
        acknowledged_at=ack.fields["at"] if ack else None,
        fetches=len(entry["fetches"]),
        dkim=dkim_results,
        acknowledgment=entry["acknowledgment"],
    )
    return summary, used


def _answer(handoff: dict[str, Any]) -> str:
    return f"{handoff['code']} {handoff['text']}".strip()


def _chained(bundle: Bundle, path: str, kind: str, delivery: Record | None) -> Record:
    record = _record(bundle, path, kind)
    if delivery is None or record.fields.get("delivery") != delivery.digest:
        raise BundleProblem(path, "chain", "does not name this recipient's delivery record")
    return record


def _verify_copy(bundle: Bundle, path: str, delivery: Record) -> tuple[str, ...]:
    """The copy is the one the delivery record fingerprints, and its DKIM signatures verify."""
    copy = bundle.files.get(path)
    if copy is None:
        raise BundleProblem(path, "copy", "missing")
    if sha256_hex(copy) != delivery.fields["copy_sha256"]:
        raise BundleProblem(path, "copy digest", "differs from copy_sha256 in the delivery record")
    keys: dict[str, bytes] = {}
    for entry in delivery.fields.get("dkim", []):
        key = DKIMKey.from_record_entry(entry)
        published = bundle.files.get(key.path)
        if published is None or published.decode("ascii", "replace").strip() != key.txt:
            raise BundleProblem(key.path, "DKIM key", "is not the key the delivery record names")
        keys[key.dns_name.lower()] = key.txt.encode("ascii")
    return _verify_dkim(path, copy, keys)


def _verify_dkim(path: str, copy: bytes, keys: dict[str, bytes]) -> tuple[str, ...]:
    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode("ascii") if isinstance(name, bytes) else name
        return keys.get(text.rstrip(".").lower())

    results = []
    try:
        signer = dkim.DKIM(copy)  # parsed once; each verify(idx) checks one signature
        count = sum(1 for name, _ in signer.headers if name.lower() == b"dkim-signature")
        for idx in range(count):
            sig, _, _ = signer.verify_headerprep(idx)
            name = f"{sig[b's'].decode()}._domainkey.{sig[b'd'].decode()}".lower()
            if name not in keys:
                continue  # a signature that is not ours (e.g. the sender's own): not ours to vouch for
            algorithm = sig[b"a"].decode()
            if not signer.verify(idx=idx, dnsfunc=dnsfunc):
                raise BundleProblem(path, "DKIM", f"{algorithm} signature s={sig[b's'].decode()} does not verify")
            results.append(f"{algorithm} d={sig[b'd'].decode()} s={sig[b's'].decode()} valid")
    except dkim.DKIMException as exc:
        raise BundleProblem(path, "DKIM", f"malformed signature ({exc})") from exc
    if keys and not results:
        raise BundleProblem(path, "DKIM", "no signature by the keys the delivery record names")
    return tuple(results)


def _anchor(bundle: Bundle, path: str, headers: Headers, regtest: bool) -> RecordCheck:
    """The record's proof, checked down to its block header; no proof yet counts as pending."""
    record = Record.from_bytes(bundle.files[path])
    ots = bundle.files.get(path + ".ots")
    outcome = AnchorOutcome(state="pending")
    if ots is not None:
        result = verify_ots(record.body, ots, headers, regtest=regtest)
        if result.status == "invalid":
            raise BundleProblem(path + ".ots", "timestamp", result.reason)
        state = "confirmed" if result.status == "verified" else "pending"
        outcome = AnchorOutcome(state, result.height, result.block_time, result.pending_calendars)
    return RecordCheck(path=path, type=record.type, digest=record.digest, anchor=outcome,
                       claimed_at=claimed_time(record))


def _bounded(check: RecordCheck, max_delay: float) -> RecordCheck:
    """The check, unless its anchor proves the record only more than ``max_delay`` seconds after its claim."""
    if check.anchor.block_time is not None:
        problem = anchor_delay_problem(check.type, check.claimed_at, check.anchor.block_time,
                                       check.anchor.bitcoin_height, max_delay)
        if problem:
            raise BundleProblem(check.path, "anchor delay", problem)
    return check


def claimed_time(record: Record) -> str | None:
    """The time an evidence record says it was written (None if it says none)."""
    claimed = record.fields.get(CLAIMED_TIME.get(record.type, ""))
    return claimed if isinstance(claimed, str) else None


def anchor_delay_problem(
    kind: str, claimed_at: str | None, block_time: int, height: int | None, max_delay: float
) -> str | None:
    """Why the time a ``kind`` record claims is not bounded by the ``block_time`` its anchor proves, or None."""
    if claimed_at is None:
        return f"a {kind} record that claims no time"
    try:
        moment = datetime.fromisoformat(claimed_at.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:  # a time without its zone means another on each machine
        return f"claims an unreadable time {claimed_at!r}"
    delay = block_time - moment.timestamp()
    if delay <= max_delay:
        return None
    block = f" (Bitcoin block {height})" if height is not None else ""
    return (f"claims {claimed_at}, but its anchor proves it existed only by {_utc(block_time)}{block},"
            f" {delay / 3600:.1f} h later, more than the {max_delay / 3600:g} h allowed"
            " (--max-anchor-delay): nothing bounds when it was written")


def _utc(unix: int) -> str:
    return f"{datetime.fromtimestamp(unix, timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def report_text(report: BundleReport, *, as_json: bool) -> str:
    """What ``estampille verify`` prints: the summary, or the JSON report."""
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False) if as_json else report.summary()
