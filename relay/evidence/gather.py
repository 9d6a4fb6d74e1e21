"""The I/O edge of proofs: a message's evidence gathered from the store, and a
bundle verified with block headers fetched from a header source.

The API, the admin pages and ``estampille proof`` all start from
:func:`load_message`; the JSON view (:func:`message_json`) and the bundle
(:func:`proof_input` then ``relay.evidence.bundle.build_bundle``) are built from it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from relay.anchor import merkle
from relay.anchor.headers import HeaderSource
from relay.anchor.worker import export_ots
from relay.errors import AnchorError, NotFoundError
from relay.evidence.bundle import (
    Anchoring,
    BundleProblem,
    Evidence,
    ProofInput,
    RecipientEvidence,
    build_bundle,
    read_zip,
)
from relay.evidence.bundle_check import BundleReport, verify_files
from relay.evidence.records import Record, iso_time
from relay.store import Store
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
    records: dict[str, Record]  # by digest
    anchoring: dict[str, Anchoring]  # by digest

    @property
    def digests(self) -> list[str]:
        return list(self.records)


async def load_message(store: Store, message_id: str) -> MessageEvidence:
    """Everything about the latest submission with ``message_id``; NotFoundError if none."""
    found_submission = await store.find_submission(message_id)
    if found_submission is None:
        raise NotFoundError(f"no message with Message-ID {message_id}")
    submission = dataclasses.asdict(found_submission)
    rows = await store.message_evidence(found_submission.id)
    digests = [d.digest for d in await store.message_digests([found_submission.id]) if d.digest]
    found = await store.records_anchoring(digests)

    def by_delivery(items: tuple[Any, ...]) -> dict[int, tuple[dict[str, Any], ...]]:
        out: dict[int, list[dict[str, Any]]] = {}
        for item in items:
            out.setdefault(item.delivery_id, []).append(dataclasses.asdict(item))
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
        records={d: Record.from_bytes(found[d].body) for d in digests if d in found},
        anchoring={d: anchoring_of(found[d]) for d in digests if d in found},
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
    return Anchoring("pending", calendars)


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
    if a.state == "pending":
        return {"state": "pending", "calendars": list(a.calendars)}
    return {"state": "queued"}


def _record_json(ev: MessageEvidence, digest: str | None) -> dict[str, Any] | None:
    if digest is None or digest not in ev.records:
        return None
    return {"digest": digest, "record": ev.records[digest].fields, "anchoring": anchoring_json(ev.anchoring[digest])}


def message_json(ev: MessageEvidence) -> dict[str, Any]:
    """What the API answers for one message (the OpenAPI document describes it)."""
    s = ev.submission
    recipients = []
    for d in ev.deliveries:
        receipt = ev.receipts.get(d["id"])
        acknowledgment = None
        if receipt is not None:
            acknowledgment = {"at": iso_time(receipt["at"]), **(_record_json(ev, receipt["record_digest"]) or {})}
        recipients.append(
            {
                "recipient": d["recipient"],
                "state": d["state"],
                "attempts": d["attempts"],
                "last_reply": None if d["last_code"] is None else f"{d['last_code']} {d['last_reply'] or ''}".strip(),
                "updated_at": iso_time(d["updated_at"]),
                "delivery": _record_json(ev, d["record_digest"]),
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
    proofs: dict[str, bytes | None] = {}
    for digest in ev.records:
        try:
            proofs[digest] = await export_ots(store, digest) if ev.anchoring[digest].state != "queued" else None
        except AnchorError:
            proofs[digest] = None  # batched, but no calendar has answered yet: counts as pending

    def evidence(digest: str | None) -> Evidence | None:
        if digest is None or digest not in ev.records:
            return None
        return Evidence(ev.records[digest], proofs[digest], ev.anchoring[digest])

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
    )


async def build_proof(store: Store, message_id: str, out: BinaryIO, *, now: float, timezone: str) -> str:
    """Write the bundle of ``message_id`` to ``out`` (off the event loop); the Message-ID as stored."""
    ev = await load_message(store, message_id)
    proof = await proof_input(store, ev, now=now, timezone=timezone)
    # Small messages and copies live in the database (INLINE_MAX): read here, the rest as the zip is written.
    digests = [proof.original_sha256, *(r.copy_sha256 for r in proof.recipients if r.copy_sha256)]
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


def read_bundle(path: Path) -> dict[str, bytes]:
    """A bundle's files from its zip, or from a directory it was unpacked into."""
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NotFoundError(f"cannot read {path}: {exc.strerror}") from exc
    return read_zip(data, path.name)


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


async def verify_bundle(path: Path, source: HeaderSource, *, regtest: bool = False) -> BundleReport:
    """Verify the bundle at ``path`` with headers from ``source`` (HeaderSourceError if it fails)."""
    try:
        files = await asyncio.to_thread(read_bundle, path)
    except BundleProblem as problem:
        return BundleReport(None, None, None, (), (), problem)
    headers = _HeadersOnDemand(source, asyncio.get_running_loop())
    return await asyncio.to_thread(verify_files, files, headers, regtest=regtest)
