"""Offline verification of a proof bundle (see relay.evidence.bundle for its layout).

Pure: the bundle's bytes come in, and so does a mapping of the Bitcoin block
headers its ``.ots`` proofs need, by height (``relay.proof.gather`` fetches them
from a header source as they are asked for). Each proof is checked by ``relay.evidence.ots_verify``.
No DNS: DKIM signatures are checked against the keys in the bundle, which must
be the keys the anchored delivery records name.

The bundle is hostile input (``relay.evidence.archive`` reads it under limits), and
so is every fact of its manifest: any error while checking is "cannot verify"
(exit 2, one line naming the file and the check), never a crash or "pending".

``attestation.html`` and ``VERIFY.md`` are informative only. In a bundle of the
current format they are regenerated from the verified records and must be
identical (a script or a false claim added to them fails); an earlier format's
are reported as not verified: they are what that release wrote, and a bundle
must verify years later with any later release.

A record's own time (``received_at``, ``certified_at``, ``handed_at``, ``at``) is
only what it says. Its anchor proves that it existed no later than the earliest
block time among its attestations: the verifier reports both, and a record whose
anchor proves it only more than ``max_anchor_delay`` seconds after its claim
(default 48 h: calendars take hours to reach a block, days when fees are high)
fails, since nothing then bounds when it was really written.

A record of a format-2 bundle whose batch has an RFC 3161 token (``relay.evidence.tsa_proof``)
is checked against it too (path to the root, imprint, signature, chain at the token's time);
the token's time is its proven time first, bounded by ``max_tsa_delay`` the same way.

Outcome: ``verified`` (everything checks and every record is anchored in
Bitcoin), ``pending`` (valid, but some anchors still wait for a block) or
``invalid`` (the first failed check, naming the file and the check).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import dkim
import jinja2

from relay.certify.message import read_header_facts
from relay.errors import HeaderSourceError
from relay.evidence.archive import BundleProblem, load_json
from relay.evidence.bundle import (
    ATTESTATION,
    FORMAT_VERSION,
    MANIFEST,
    VERIFY_DOC,
    VERIFY_PAGE,
    Bundle,
    DKIMKey,
    parse_manifest,
    record_path,
    render_attestation,
    render_verify_doc,
    report_path,
    verify_page,
)
from relay.evidence.ots_verify import verify_ots
from relay.evidence.records import Record, sha256_hex
from relay.evidence.tsa_proof import TSAOutcome, check_record_token
from relay.evidence.tsa_verify import Token

EXIT_VERIFIED = 0
EXIT_PENDING = 1
EXIT_INVALID = 2
DEFAULT_MAX_ANCHOR_DELAY = 48 * 3600  # seconds; see the module docstring
# A token is asked when the record's batch forms (anchor.interval, 10 min by default) and retried
# while its TSA is down: as lenient as the Bitcoin bound by default; tighten it with --max-tsa-delay.
DEFAULT_MAX_TSA_DELAY = 48 * 3600
CLAIMED_TIME = {"submission": "received_at", "delivery": "certified_at", "handoff": "handed_at", "receipt": "at",
                "report": "received_at", "disclosure": "at", "meeting_date": "set_at"}


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
    tsa: TSAOutcome | None = None  # its batch's RFC 3161 token, checked

    @property
    def proven_text(self) -> str:
        """When the anchors prove the record existed by, for people: the token's time first, when there is one."""
        bitcoin = None
        if self.anchor.block_time is not None:
            bitcoin = f"{_utc(self.anchor.block_time)} (Bitcoin block {self.anchor.bitcoin_height})"
        if self.tsa is not None:
            qualified = f"declared qualified, {self.tsa.trust_list}" if self.tsa.qualified else "not declared qualified"
            stamped = f"{_utc(self.tsa.unix)} (RFC 3161 token of {self.tsa.tsa}, {qualified})"
            return stamped + (f"; {bitcoin}" if bitcoin else "; Bitcoin anchor pending")
        return bitcoin or "not yet proven (anchor pending)"


@dataclass(frozen=True)
class RecipientSummary:
    recipient: str
    sent_at: str | None
    handed_at: str | None
    reply: str | None
    delivered: bool
    copy: str  # "checked", "withheld" (a bundle for another recipient) or "none" (not certified yet)
    earlier_answers: tuple[str, ...]  # the upstream's answers to earlier attempts, oldest first
    acknowledged_at: str | None
    fetches: int
    dkim: tuple[str, ...]
    acknowledgment: str | None = None  # the receipt record's path
    # What the delivery status reports received say happened at the member's server, oldest first.
    reports: tuple[str, ...] = ()


@dataclass(frozen=True)
class InformativeFile:
    """A file for people, not evidence: whether the verifier could regenerate it."""

    path: str
    checked: str


@dataclass(frozen=True)
class BundleReport:
    message_id: str | None
    subject: str | None
    received_at: str | None
    recipients: tuple[RecipientSummary, ...]
    records: tuple[RecordCheck, ...]
    problem: BundleProblem | None
    format_version: int | None = None
    scope: str | None = None  # the one recipient whose copy a per-recipient bundle carries
    informative: tuple[InformativeFile, ...] = ()

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
            "format_version": self.format_version,
            "scope": self.scope,
            "problem": problem,
            "recipients": [asdict(r) for r in self.recipients],
            "records": [{**asdict(r), "proven_at": _utc(r.anchor.block_time) if r.anchor.block_time else None}
                        for r in self.records],
            "informative_only": [asdict(f) for f in self.informative],
        }

    def summary(self) -> str:
        """A report a person reads: one block per recipient, then the anchors."""
        if self.problem is not None:  # one line, whatever an exception's text holds
            return " ".join(f"INVALID: {self.problem.path}: {self.problem.check} failed: {self.problem.detail}".split())
        lines = [f"Message {self.message_id}" + (f" ({self.subject})" if self.subject else "")]
        lines.append(f"  received {self.received_at}; {len(self.recipients)} recipient(s); bundle format "
                     f"{self.format_version}" + (f", made for {self.scope} only" if self.scope else ""))
        checks = {r.path: r for r in self.records}
        for r in self.recipients:
            lines.append(f"- {r.recipient}")
            lines.append(f"    sent:         {r.sent_at or 'not yet certified'}")
            if r.copy == "withheld":
                lines.append("    copy:         not in this bundle (its digest is in the delivery record)")
            lines.append(f"    handed over:  {r.handed_at or 'not yet'}" + (f" ({r.reply})" if r.reply else ""))
            for answer in r.earlier_answers:
                lines.append(f"    earlier:      {answer}")
            for report in r.reports:
                lines.append(f"    reported:     {report}")
            lines.append(f"    delivered:    {'yes' if r.delivered else 'no'}")
            lines.append(f"    acknowledged: {r.acknowledged_at or 'no'}" + (f"; link fetched {r.fetches}x" if r.fetches else ""))
            if r.acknowledgment in checks:
                lines.append(f"      proven by:  {checks[r.acknowledgment].proven_text}")
            lines.append(f"    DKIM:         {', '.join(r.dkim) or 'no signature checked'}")
        confirmed = [r.anchor for r in self.records if r.anchor.state == "confirmed"]
        anchors = f"Anchors: {len(confirmed)} of {len(self.records)} records confirmed in Bitcoin"
        if confirmed:
            heights = ", ".join(str(h) for h in sorted({a.bitcoin_height for a in confirmed if a.bitcoin_height is not None}))
            first = min(a.block_time for a in confirmed if a.block_time is not None)
            anchors += f" (block {heights}, the earliest {_utc(first)})"
        lines.append(anchors)
        stamped = [r.tsa for r in self.records if r.tsa is not None]
        if stamped:
            names = ", ".join(sorted({t.tsa for t in stamped}))
            lines.append(f"RFC 3161 tokens: {len(stamped)} of {len(self.records)} records, by {names}"
                         f" (CA SHA-256 {', '.join(sorted({t.ca_sha256 for t in stamped}))})")
        lines.append("Each record: the time it claims; the time its anchor proves it existed by")
        for rec in self.records:
            lines.append(f"  {rec.type:<10} {rec.path}: claims {rec.claimed_at or '?'}; existed by {rec.proven_text}")
        for rec in self.records:
            if rec.anchor.state != "confirmed":
                where = ", ".join(rec.anchor.calendars) or "not yet submitted"
                lines.append(f"  pending: {rec.path} ({where})")
        for f in self.informative:
            lines.append(f"Informative only, not evidence: {f.path} ({f.checked})")
        lines.append({"verified": "VERIFIED", "pending": "VALID, ANCHORS PENDING: verify again later"}[self.status])
        return "\n".join(lines)


def verify_files(
    files: dict[str, bytes], headers: Headers, *, regtest: bool = False,
    max_anchor_delay: float = DEFAULT_MAX_ANCHOR_DELAY, max_tsa_delay: float = DEFAULT_MAX_TSA_DELAY,
) -> BundleReport:
    """Verify a bundle given as its files (path -> bytes), from a zip or an unpacked directory.

    A record whose anchor proves it existed only more than ``max_anchor_delay`` seconds after the
    time it claims is invalid (see the module docstring), and so is one whose RFC 3161 token is
    more than ``max_tsa_delay`` seconds after it.
    """
    try:
        bundle = parse_manifest(files)
        return _verify(bundle, headers, regtest, (max_anchor_delay, max_tsa_delay))
    except BundleProblem as problem:
        return cannot_verify(problem)
    except (KeyError, TypeError, ValueError, AttributeError, jinja2.TemplateError) as exc:
        # Only a manifest written by hand (its checksum recomputed) can miss facts.
        return cannot_verify(BundleProblem(MANIFEST, "facts", f"incomplete or malformed ({exc!r})"))
    except HeaderSourceError:
        raise  # the source of block headers failed, not the bundle: the CLI says so (exit 4), try again
    except Exception as exc:  # noqa: BLE001 -- hostile input must never crash the verifier nor read as "pending"
        return cannot_verify(BundleProblem("bundle", "cannot verify", f"{type(exc).__name__}: {exc}"[:300]))


def cannot_verify(problem: BundleProblem) -> BundleReport:
    """The report of a bundle that failed a check, or could not be checked (exit 2)."""
    return BundleReport(None, None, None, (), (), problem)


def _verify(bundle: Bundle, headers: Headers, regtest: bool, max_delays: tuple[float, float]) -> BundleReport:
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
    if facts.get("scope") is not None and facts["scope"] not in named:
        raise BundleProblem(MANIFEST, "scope", "names no recipient of the message")
    paths = [facts["submission"]]
    recipients = []
    for entry in facts["recipients"]:
        summary, used = _verify_recipient(bundle, entry, submission, facts.get("scope"))
        recipients.append(summary)
        paths += used
    tokens: dict[str, tuple[Token, str]] = {}  # each batch's token, checked once for all its records
    records = tuple(_bounded(_anchor(bundle, path, headers, regtest, tokens), *max_delays) for path in paths)
    _check_claimed_anchoring(facts, records)
    if bundle.version >= 2 and facts["tsa"] != {r.path: r.tsa.facts() for r in sorted(records, key=lambda r: r.path)
                                                if r.tsa is not None}:
        raise BundleProblem(MANIFEST, "tsa", "its RFC 3161 facts are not what the records' tokens show")
    return BundleReport(
        message_id=facts["message_id"],
        subject=read_header_facts(bundle.files[facts["original"]]).subject,  # the message's, not the manifest's
        received_at=fields.get("received_at"),
        recipients=tuple(recipients),
        records=records,
        problem=None,
        format_version=bundle.version,
        scope=facts.get("scope"),
        informative=_informative(bundle),
    )


def _check_claimed_anchoring(facts: dict[str, Any], records: tuple[RecordCheck, ...]) -> None:
    """What the manifest (and so the attestation) says was confirmed must be confirmed by its proof.

    Only the state: a proof with several Bitcoin attestations reports its lowest height, where the
    relay may have recorded another of them; the report gives the heights the proofs show."""
    claims = facts.get("anchoring", {})
    for check in records:
        claim = claims.get(check.path) or {}
        if claim.get("state") == "confirmed" and check.anchor.state != "confirmed":
            raise BundleProblem(MANIFEST, "anchoring", f"claims {check.path} confirmed, which its .ots does not prove")


def _informative(bundle: Bundle) -> tuple[InformativeFile, ...]:
    """The printable files: regenerated and compared in the current format, else only listed;
    and the verification page, compared with this release's (never a reason to refuse the bundle:
    an earlier release's page differs, and the report is what counts, not a page in the bundle)."""
    page: tuple[InformativeFile, ...] = ()
    if VERIFY_PAGE in bundle.files:
        same = bundle.files[VERIFY_PAGE] == verify_page()
        page = (InformativeFile(VERIFY_PAGE, "identical to this release's verification page" if same else
                                "differs from this release's verification page: use an official release's"),)
    if bundle.version != FORMAT_VERSION:
        note = f"made by bundle format {bundle.version}: not regenerated, not verified"
        return tuple(InformativeFile(path, note) for path in (ATTESTATION, VERIFY_DOC) if path in bundle.files) + page
    expected = {
        ATTESTATION: render_attestation(bundle.facts, bundle.files).encode("utf-8"),
        VERIFY_DOC: render_verify_doc(bundle.facts["message_id"]).encode("utf-8"),
    }
    for path, data in expected.items():
        if bundle.files.get(path) != data:
            raise BundleProblem(path, "regenerated", "differs from what the verified records give (edited?)")
    return tuple(InformativeFile(path, "regenerated from the verified records: identical") for path in expected) + page


def _record(bundle: Bundle, path: str, kind: str) -> Record:
    """A record file, canonical, of the expected type, stored under its own digest."""
    try:
        load_json(path, bundle.files[path])  # bounds its nesting first
        record = Record.from_bytes(bundle.files[path])
    except (KeyError, ValueError) as exc:
        raise BundleProblem(path, "record", f"not a canonical evidence record ({exc})") from exc
    if record.type != kind or record_path(record) != path:
        raise BundleProblem(path, "record digest", f"not the {kind} record its name says")
    return record


def _verify_recipient(
    bundle: Bundle, entry: dict[str, Any], submission: Record, scope: str | None
) -> tuple[RecipientSummary, list[str]]:
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
        elif not (entry.get("copy_withheld") and scope not in (None, recipient)):
            # A copy is left out only from a bundle made for another recipient.
            raise BundleProblem(entry["delivery"], "copy", f"the copy sent to {recipient} is missing")
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
    reports = []
    for path in entry.get("reports", []):  # absent from bundles made before reports were received
        reports.append(_verify_report(bundle, path, delivery))
        used.append(path)
    h = handoff.fields if handoff else {}
    summary = RecipientSummary(
        recipient=recipient,
        sent_at=delivery.fields["certified_at"] if delivery else None,
        handed_at=h.get("handed_at"),
        reply=_answer(h) if h else None,
        delivered=bool(h) and 200 <= int(h["code"]) < 300,
        copy="checked" if entry["copy"] else "withheld" if entry.get("copy_withheld") else "none",
        earlier_answers=tuple(_answer(_record(bundle, path, "handoff").fields) for path in earlier),
        acknowledged_at=ack.fields["at"] if ack else None,
        fetches=len(entry["fetches"]),
        dkim=dkim_results,
        acknowledgment=entry["acknowledgment"],
        reports=tuple(reports),
    )
    return summary, used


def _verify_report(bundle: Bundle, path: str, delivery: Record | None) -> str:
    """A report record chained to the delivery, and the report it fingerprints; what it says."""
    record = _chained(bundle, path, "report", delivery)
    fields = record.fields
    message_path = report_path(record)
    message = bundle.files.get(message_path)
    if message is None:
        raise BundleProblem(message_path, "report", "missing")
    if sha256_hex(message) != fields["report_sha256"]:
        raise BundleProblem(message_path, "report digest", "differs from report_sha256 in the report record")
    where = f" at {fields['remote_mta']}" if fields.get("remote_mta") else ""
    said = f": {fields['diagnostic']}" if fields.get("diagnostic") else ""
    return f"{fields['action']} ({fields['status']}){where}{said}, reported by {fields.get('reporting_mta') or '?'}" \
           f" on {fields['received_at']}"


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


def _anchor(
    bundle: Bundle, path: str, headers: Headers, regtest: bool, tokens: dict[str, tuple[Token, str]]
) -> RecordCheck:
    """The record's proofs: its .ots down to its block header (none yet counts as pending), its RFC 3161 token."""
    record = Record.from_bytes(bundle.files[path])
    ots = bundle.files.get(path + ".ots")
    outcome = AnchorOutcome(state="pending")
    if ots is not None:
        result = verify_ots(record.body, ots, headers, regtest=regtest)
        if result.status == "invalid":
            raise BundleProblem(path + ".ots", "timestamp", result.reason)
        state = "confirmed" if result.status == "verified" else "pending"
        outcome = AnchorOutcome(state, result.height, result.block_time, result.pending_calendars)
    tsa = check_record_token(bundle.files, path, record.digest, tokens) if bundle.version >= 2 else None
    return RecordCheck(path=path, type=record.type, digest=record.digest, anchor=outcome,
                       claimed_at=claimed_time(record), tsa=tsa)


def _bounded(check: RecordCheck, max_delay: float, max_tsa_delay: float) -> RecordCheck:
    """The check, unless its anchor proves the record only more than ``max_delay`` seconds after its claim,
    or its RFC 3161 token more than ``max_tsa_delay`` seconds after it."""
    if check.tsa is not None:
        problem = tsa_delay_problem(check.type, check.claimed_at, check.tsa, max_tsa_delay)
        if problem:
            raise BundleProblem(check.path, "RFC 3161 delay", problem)
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


def _claimed_instant(kind: str, claimed_at: str | None) -> float | str:
    """The claimed time as a Unix time, or why it cannot be read."""
    if claimed_at is None:
        return f"a {kind} record that claims no time"
    try:
        moment = datetime.fromisoformat(claimed_at.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:  # a time without its zone means another on each machine
        return f"claims an unreadable time {claimed_at!r}"
    return moment.timestamp()


def anchor_delay_problem(
    kind: str, claimed_at: str | None, block_time: int, height: int | None, max_delay: float
) -> str | None:
    """Why the time a ``kind`` record claims is not bounded by the ``block_time`` its anchor proves, or None."""
    claimed = _claimed_instant(kind, claimed_at)
    if isinstance(claimed, str):
        return claimed
    delay = block_time - claimed
    if delay <= max_delay:
        return None
    block = f" (Bitcoin block {height})" if height is not None else ""
    return (f"claims {claimed_at}, but its anchor proves it existed only by {_utc(block_time)}{block},"
            f" {delay / 3600:.1f} h later, more than the {max_delay / 3600:g} h allowed"
            " (--max-anchor-delay): nothing bounds when it was written")


def tsa_delay_problem(kind: str, claimed_at: str | None, token: TSAOutcome, max_delay: float) -> str | None:
    """Why the time a ``kind`` record claims is not bounded by its RFC 3161 token, or None."""
    claimed = _claimed_instant(kind, claimed_at)
    if isinstance(claimed, str):
        return claimed
    delay = token.unix - claimed
    if delay <= max_delay:
        return None
    return (f"claims {claimed_at}, but its RFC 3161 token ({token.token}) proves it existed only by {token.time},"
            f" {delay / 60:.1f} min later, more than the {max_delay / 60:g} min allowed (--max-tsa-delay)")


def _utc(unix: float) -> str:
    return f"{datetime.fromtimestamp(unix, UTC):%Y-%m-%d %H:%M:%S} UTC"


def report_text(report: BundleReport, *, as_json: bool) -> str:
    """What ``estampille verify`` prints: the summary, or the JSON report."""
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False) if as_json else report.summary()
