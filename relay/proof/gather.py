"""The I/O edge of proofs: a message's evidence gathered from the store, and a
bundle verified with block headers fetched from a header source.

The API, the admin pages and ``estampille proof`` all start from
:func:`load_message`; the JSON view (:func:`message_json`) and the bundle
(:func:`proof_input` then ``relay.evidence.bundle.build_bundle``) are built from it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from relay.anchor import merkle
from relay.anchor.headers import HeaderSource
from relay.anchor.worker import export_leaf
from relay.errors import AmbiguousError, NotFoundError
from relay.evidence.archive import MAX_RATIO, BundleProblem, read_directory, read_zip
from relay.evidence.bundle import (
    Anchoring,
    Evidence,
    ProofInput,
    RecipientEvidence,
    build_bundle,
)
from relay.evidence.bundle_check import (
    DEFAULT_MAX_ANCHOR_DELAY,
    DEFAULT_MAX_TSA_DELAY,
    BundleReport,
    cannot_verify,
    verify_files,
)
from relay.evidence.records import Record, disclosure_record, iso_time
from relay.evidence.tsa_proof import TokenProof
from relay.law import register
from relay.store import Store, proofs, tokens
from relay.store import law as law_store
from relay.store import reports as report_store
from relay.store import tsa as tsa_store
from relay.store.evidence import RecordAnchoring
from relay.store.states import BatchState


@dataclass(frozen=True)
class MessageEvidence:
    """One submission and every row and record about it, as read from the store."""

    submission: dict[str, Any]
    deliveries: tuple[dict[str, Any], ...]
    attempts: dict[int, tuple[dict[str, Any], ...]]  # by delivery id
    fetches: dict[int, tuple[dict[str, Any], ...]]  # by delivery id
    receipts: dict[int, dict[str, Any]]  # by delivery id
    handoffs: dict[int, tuple[str, ...]]  # by delivery id: every hand-off record's digest, oldest first
    reports: dict[int, tuple[dict[str, Any], ...]]  # by delivery id: delivery status reports, oldest first
    records: dict[str, Record]  # by digest
    anchoring: dict[str, Anchoring]  # by digest
    same_message_id: tuple[dict[str, Any], ...] = ()  # every submission with this Message-ID (choices)
    disclosures: tuple[Record, ...] = ()  # the tokens each bundle made so far disclosed, oldest first
    refusals: dict[int, tuple[dict[str, Any], ...]] = field(default_factory=dict)  # by delivery id
    stamps: dict[str, dict[str, Any]] = field(default_factory=dict)  # by digest: its batch's RFC 3161 token

    @property
    def digests(self) -> list[str]:
        return list(self.records)


def choice(row: Any) -> dict[str, Any]:
    """How a submission is told apart from others with its Message-ID."""
    return {"submission_id": row["id"], "message_id": row["message_id"], "sender": row["mail_from"],
            "subject": row["subject"], "received_at": iso_time(row["received_at"])}


async def load_message(store: Store, message_id: str, submission_id: str | None = None) -> MessageEvidence:
    """Everything about the submission with ``message_id``: the one ``submission_id`` names, or
    the only one; AmbiguousError listing them when several carry it, NotFoundError if none."""
    matches = await proofs.submissions_with_message_id(store, message_id)
    chosen = [r for r in matches if submission_id in (None, r["id"])]
    if not chosen:
        raise NotFoundError(f"no message with Message-ID {message_id}"
                            + (f" and submission {submission_id}" if submission_id else ""))
    if len(chosen) > 1:
        raise AmbiguousError(f"{len(chosen)} messages carry Message-ID {message_id}: choose one by its submission id",
                             [choice(r) for r in chosen])
    submission = dict(chosen[0])
    rows = await store.message_evidence(submission["id"])
    reports = await report_store.reports_of(store, submission["id"])
    digests = [d.digest for d in await store.message_digests([submission["id"]]) if d.digest]
    found = await store.records_anchoring(digests)
    tokens_by_batch = await tsa_store.token_summaries(
        store, [row.batch_id for row in found.values() if row.batch_id is not None])
    given = await tokens.message_tokens(store, submission["id"])

    def by_delivery(items: Iterable[Any]) -> dict[int, tuple[dict[str, Any], ...]]:
        """Store records (dataclasses) or rows of the subsystems' own queries, by delivery id."""
        out: dict[int, list[dict[str, Any]]] = {}
        for item in items:
            fields = dataclasses.asdict(item) if dataclasses.is_dataclass(item) else dict(item)
            out.setdefault(fields["delivery_id"], []).append(fields)
        return {k: tuple(v) for k, v in out.items()}

    handoffs: dict[int, list[str]] = {}
    for delivery_id, digest in rows.handoffs:
        handoffs.setdefault(delivery_id, []).append(digest)
    return MessageEvidence(
        submission=submission,
        deliveries=tuple(dataclasses.asdict(d) for d in rows.deliveries),
        attempts=by_delivery(rows.attempts),
        fetches=by_delivery(rows.fetches),
        receipts={r.delivery_id: dataclasses.asdict(r) for r in rows.receipts},
        handoffs={k: tuple(v) for k, v in handoffs.items()},
        reports=by_delivery(reports),
        records={d: Record.from_bytes(found[d].body) for d in digests if d in found},
        anchoring={d: anchoring_of(found[d]) for d in digests if d in found},
        same_message_id=tuple(choice(r) for r in matches),
        disclosures=tuple(Record.from_bytes(r["body"]) for r in given["disclosures"]),
        refusals=by_delivery(given["refusals"]),
        stamps={d: stamp_json(tokens_by_batch.get(found[d].batch_id)) for d in digests if d in found},
    )


def anchoring_of(row: RecordAnchoring) -> Anchoring:
    """A record's anchoring state from its leaf and batch."""
    if row.batch_id is None:
        return Anchoring("queued")
    if row.batch_state == BatchState.CONFIRMED:
        return Anchoring("confirmed", (), row.bitcoin_height, row.block_time)
    calendars: tuple[str, ...] = ()
    if row.batch_timestamp is not None and row.root is not None:
        root = merkle.deserialize_timestamp(row.batch_timestamp, row.root)
        calendars = tuple(sorted({uri for _, uri in merkle.pending_calendars(root)}))
    if row.batch_state == BatchState.ATTESTED:  # a calendar's claim of a block, no header checked yet
        return Anchoring("attested", calendars, row.bitcoin_height)
    return Anchoring("pending", calendars)


def stamp_json(row: Any) -> dict[str, Any]:
    """A record's RFC 3161 token from its batch's token row (None: the batch has none, or no batch yet)."""
    if row is None:
        return {"state": "none"}
    if row["state"] != "stamped":
        return {"state": "waiting"}
    return {"state": "stamped", "tsa": row["authority"], "time": iso_time(row["token_time"]),
            "qualified": bool(row["qualified"])}


def _earlier(ev: MessageEvidence, delivery: dict[str, Any]) -> list[str]:
    """The hand-off records of a delivery before its last one (answers to earlier attempts)."""
    return [h for h in ev.handoffs.get(delivery["id"], ()) if h != delivery["handoff_digest"]]


# -- the JSON view (API and admin pages) -----------------------------------


def anchoring_json(a: Anchoring) -> dict[str, Any]:
    if a.state == "confirmed":
        return {
            "state": "confirmed",
            "bitcoin_height": a.bitcoin_height,
            "block_time": iso_time(a.block_time) if a.block_time is not None else None,
        }
    if a.state == "attested":
        return {"state": "attested", "calendars": list(a.calendars), "bitcoin_height": a.bitcoin_height}
    if a.state == "pending":
        return {"state": "pending", "calendars": list(a.calendars)}
    return {"state": "queued"}


def _record_json(ev: MessageEvidence, digest: str | None) -> dict[str, Any] | None:
    if digest is None or digest not in ev.records:
        return None
    return {"digest": digest, "record": ev.records[digest].fields, "anchoring": anchoring_json(ev.anchoring[digest]),
            "tsa": ev.stamps.get(digest, {"state": "none"})}


def _last_reply(delivery: Any) -> str | None:
    """The upstream's last answer, or why none came (a refused connection has no code, but a reason)."""
    if delivery["last_code"] is None:
        return delivery["last_reply"] or None
    return f"{delivery['last_code']} {delivery['last_reply'] or ''}".strip()


def message_json(ev: MessageEvidence) -> dict[str, Any]:
    """What the API answers for one message (the OpenAPI document describes it)."""
    s = ev.submission
    disclosed = {digest for r in ev.disclosures for digest in r.fields["deliveries"]}
    recipients = []
    for d in ev.deliveries:
        receipt = ev.receipts.get(d["id"])
        acknowledgment = None
        if receipt is not None:
            acknowledgment = {"at": iso_time(receipt["at"]), **(_record_json(ev, receipt["record_digest"]) or {})}
        delivery = _record_json(ev, d["record_digest"])
        recipients.append(
            {
                "recipient": d["recipient"],
                "state": d["state"],
                "attempts": d["attempts"],
                "last_reply": _last_reply(d),
                "updated_at": iso_time(d["updated_at"]),
                "delivery": delivery,
                # Why the copy carries no acknowledgment link (it can never be acknowledged), or None.
                "unlinked_reason": None if delivery is None or delivery["record"]["ack_link_inserted"]
                else delivery["record"]["ack_link_reason"],
                "handoff": _record_json(ev, d["handoff_digest"]),
                "earlier_handoffs": [_record_json(ev, h) for h in _earlier(ev, d)],
                "fetches": [
                    {
                        "at": iso_time(f["at"]),
                        "method": f["method"],
                        "classification": f["classification"],
                        "reason": f["reason"],
                        "record": _record_json(ev, f["record_digest"]),
                    }
                    for f in ev.fetches.get(d["id"], ())
                ],
                "acknowledgment": acknowledgment,
                "reports": [
                    {
                        "action": r["action"],
                        "status": r["status"],
                        "remote_mta": r["remote_mta"],
                        "diagnostic": r["diagnostic"],
                        "received_at": iso_time(r["received_at"]),
                        "record": _record_json(ev, r["record_digest"]),
                    }
                    for r in ev.reports.get(d["id"], ())
                ],
                "link_disclosed": d["record_digest"] in disclosed,
                "link_refusals": [
                    {"at": iso_time(x["at"]), "method": x["method"], "reason": x["reason"]}
                    for x in ev.refusals.get(d["id"], ())
                ],
            }
        )
    states = [a.state for a in ev.anchoring.values()]
    return {
        "message_id": s["message_id"],
        "subject": s["subject"],
        "sender": s["mail_from"],
        "received_at": iso_time(s["received_at"]),
        "submission_id": s["id"],
        "submission": _record_json(ev, s["record_digest"]),
        "same_message_id": list(ev.same_message_id),
        "disclosures": [
            {"digest": r.digest, "at": r.fields["at"], "scope": r.fields["scope"], "tokens": len(r.fields["token_sha256s"])}
            for r in ev.disclosures
        ],
        "recipients": recipients,
        "summary": {
            "recipients": len(recipients),
            "delivered": sum(1 for r in recipients if r["state"] == "delivered"),
            "acknowledged": sum(1 for r in recipients if r["acknowledgment"]),
            "records": len(states),
            "anchored": states.count("confirmed"),
        },
    }


# -- bundles ----------------------------------------------------------------


async def proof_input(store: Store, ev: MessageEvidence, *, now: float, timezone: str) -> ProofInput:
    """The bundle's content: message files and each record's .ots, read from the store."""
    proofs: dict[str, tuple[bytes | None, TokenProof | None]] = {}
    batch_tokens: dict[int, tsa_store.StoredToken | None] = {}
    for digest in ev.records:
        # No .ots while no calendar has answered: counts as pending.
        queued = ev.anchoring[digest].state == "queued"
        proofs[digest] = (None, None) if queued else await export_leaf(store, digest, batch_tokens)

    def evidence(digest: str | None) -> Evidence | None:
        if digest is None or digest not in ev.records:
            return None
        ots, token = proofs[digest]
        return Evidence(ev.records[digest], ots, ev.anchoring[digest], token)

    recipients = []
    for d in ev.deliveries:
        receipt = ev.receipts.get(d["id"])
        recipients.append(
            RecipientEvidence(
                recipient=d["recipient"],
                state=d["state"],
                copy_sha256=d["copy_sha256"],
                delivery=evidence(d["record_digest"]),
                handoff=evidence(d["handoff_digest"]),
                earlier_handoffs=tuple(e for h in _earlier(ev, d) if (e := evidence(h)) is not None),
                acknowledgment=evidence(receipt["record_digest"]) if receipt else None,
                fetches=tuple(
                    e for f in ev.fetches.get(d["id"], ()) if (e := evidence(f["record_digest"])) is not None
                ),
                reports=tuple(
                    e for r in ev.reports.get(d["id"], ()) if (e := evidence(r["record_digest"])) is not None
                ),
            )
        )
    s = ev.submission
    submission = evidence(s["record_digest"])
    if submission is None:
        raise NotFoundError(f"message {s['message_id']} has no submission record")
    return ProofInput(
        message_id=s["message_id"],
        subject=s["subject"],
        original_sha256=s["data_sha256"],
        submission=submission,
        recipients=tuple(recipients),
        generated_at=iso_time(now),
        timezone=timezone,
        law=await convocation_view(store, ev, now),
    )


async def convocation_view(store: Store, ev: MessageEvidence, now: float) -> dict[str, Any] | None:
    """The law's view of the message for the attestation (relay.law.register), if intake or an admin stored one."""
    stored = await law_store.convocation(store, ev.submission["id"])
    if stored is None:
        return None
    members = register.members_of(message_json(ev), await law_store.reminders_of(store, ev.submission["id"]))
    return register.view(stored.convocation, members, datetime.fromtimestamp(now, UTC))


async def build_proof(
    store: Store, message_id: str, out: BinaryIO, *, now: float, timezone: str, recipient: str | None = None,
    submission_id: str | None = None,
) -> str:
    """Write the bundle of ``message_id`` to ``out`` (off the event loop); the Message-ID as stored.

    ``submission_id`` picks one of several messages with that Message-ID (see load_message).
    With ``recipient``, the bundle carries only that recipient's copy (NotFoundError if the
    message has no such recipient). Before any byte is written, the tokens of the copies it
    carries are marked disclosed, with a disclosure record (see relay.store.tokens).
    """
    ev = await load_message(store, message_id, submission_id)
    scope = None
    if recipient is not None:
        scope = next((d["recipient"] for d in ev.deliveries if d["recipient"].lower() == recipient.lower()), None)
        if scope is None:
            raise NotFoundError(f"message {message_id} has no recipient {recipient}")
    proof = replace(await proof_input(store, ev, now=now, timezone=timezone), scope=scope)
    proof = replace(proof, disclosure=await _disclose(store, ev, proof, now))
    # Small messages and copies live in the database (INLINE_MAX): read here, the rest as the zip is written.
    digests = [proof.original_sha256, *(r.copy_sha256 for r in proof.recipients if r.copy_sha256 and proof.discloses(r)),
               *(e.record.fields["report_sha256"] for r in proof.recipients for e in r.reports)]
    inline = await store.inline_bytes(digests)

    def read_blob(sha256: str) -> bytes:
        if sha256 in inline:
            return inline[sha256]
        try:
            return store.blob_path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"message file {sha256} is missing (purged after its retention?)") from exc

    await asyncio.to_thread(build_bundle, proof, read_blob, out)
    return proof.message_id


async def _disclose(store: Store, ev: MessageEvidence, proof: ProofInput, now: float) -> str:
    """Record which tokens the bundle's copies carry, and refuse them from now on; the record's digest."""
    carried = {r.recipient for r in proof.recipients if proof.discloses(r)}
    deliveries = [d for d in ev.deliveries if d["recipient"] in carried]
    hashes = await tokens.token_hashes(store, [d["id"] for d in deliveries])
    record = disclosure_record(
        submission_digest=proof.submission.record.digest,
        deliveries=[d["record_digest"] for d in deliveries if d["record_digest"]],
        token_sha256s=hashes, scope=proof.scope, at=iso_time(now),
    )
    await tokens.record_disclosure(store, record, submission_id=ev.submission["id"], token_sha256s=hashes, now=now)
    return record.digest


def read_bundle(path: Path, *, max_ratio: int = MAX_RATIO) -> dict[str, bytes]:
    """A bundle's files from its zip, or from a directory it was unpacked into (streamed, bounded)."""
    if path.is_dir():
        return read_directory(path)
    if not path.exists():
        raise NotFoundError(f"cannot read {path}: no such file")
    return read_zip(path, path.name, max_ratio=max_ratio)


class _HeadersOnDemand(Mapping[int, bytes]):
    """Block headers fetched from ``source`` when the verifier first asks for a height.

    The verifier runs in a worker thread; each fetch runs on the event loop. Asking
    on demand parses each proof once, and the manifest is checked before any fetch.
    """

    def __init__(self, source: HeaderSource, loop: asyncio.AbstractEventLoop) -> None:
        self._source, self._loop = source, loop
        self._cache: dict[int, bytes] = {}

    def __getitem__(self, height: int) -> bytes:
        if height not in self._cache:
            future = asyncio.run_coroutine_threadsafe(self._source.header(height), self._loop)
            self._cache[height] = future.result()
        return self._cache[height]

    def __iter__(self) -> Iterator[int]:
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)


async def verify_bundle(
    path: Path, source: HeaderSource, *, regtest: bool = False, max_anchor_delay: float = DEFAULT_MAX_ANCHOR_DELAY,
    max_tsa_delay: float = DEFAULT_MAX_TSA_DELAY,
    max_ratio: int = MAX_RATIO,
) -> BundleReport:
    """Verify the bundle at ``path`` with headers from ``source`` (HeaderSourceError if it fails)."""
    try:
        files = await asyncio.to_thread(read_bundle, path, max_ratio=max_ratio)
    except BundleProblem as problem:
        return cannot_verify(problem)
    headers = _HeadersOnDemand(source, asyncio.get_running_loop())
    return await asyncio.to_thread(verify_files, files, headers, regtest=regtest, max_anchor_delay=max_anchor_delay,
                                   max_tsa_delay=max_tsa_delay)
