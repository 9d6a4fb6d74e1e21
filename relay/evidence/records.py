"""Evidence records: canonical JSON whose SHA-256 is the leaf that gets anchored.

A record is a JSON object with a ``type`` and a schema ``version``, serialised
canonically (UTF-8, sorted keys, no insignificant whitespace). Records chain by
digest: a delivery names its submission's digest, a hand-off its delivery's, a
receipt its delivery's, a delivery status report its delivery's, a disclosure (the tokens a
proof bundle gave out) its submission's. Personal data never enters a record in clear: IP
addresses and user agents appear only as ``sha256(salt || value)``.

Pure: callers pass times (ISO 8601 UTC strings), salts and digests in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

RECORD_VERSION = 1
RECORD_TYPES = ("submission", "delivery", "handoff", "receipt", "report", "disclosure",
                "meeting_date")  # meeting_date: relay.law.evidence

# A receipt record's canonical JSON written out, keys in sorted order: every page fetch builds
# one, and json.dumps(sort_keys=True) cost half of it. Its strings go through the encoder
# json.dumps itself uses (ensure_ascii=False), so the bytes are canonical_json's (pinned by a test).
_RECEIPT_JSON = (
    '{"at":%s,"delivery":%s,"ip_commitment":%s,"kind":%s,"type":"receipt","user_agent_commitment":%s,"version":'
    + str(RECORD_VERSION) + "}"
)


@dataclass(frozen=True)
class Record:
    """One evidence record: its canonical bytes and their SHA-256."""

    body: bytes
    digest: str  # hex SHA-256 of body

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Record:
        if fields.get("type") not in RECORD_TYPES:
            raise ValueError(f"unknown record type {fields.get('type')!r}")
        body = canonical_json({**fields, "version": RECORD_VERSION})
        return cls(body=body, digest=sha256_hex(body))

    @classmethod
    def from_bytes(cls, body: bytes) -> Record:
        """Parse stored bytes, refusing anything that is not canonical."""
        fields = json.loads(body)
        if canonical_json(fields) != body:
            raise ValueError("record is not canonical JSON")
        return cls(body=body, digest=sha256_hex(body))

    @property
    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = json.loads(self.body)
        return fields

    @property
    def type(self) -> str:
        return str(self.fields["type"])


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commitment(salt: bytes, value: str) -> str:
    """A salted commitment to personal data: verifiable while the salt is kept, opaque after."""
    return sha256_hex(salt + value.encode("utf-8"))


def submission_record(
    *,
    data_sha256: str,
    mail_from: str,
    rcpt_to: list[str],
    client_address: str,
    auth_user: str | None,
    tls: str | None,
    received_at: str,
    message_id: str | None,
    attachments: list[dict[str, str]],
    from_added: str | None = None,
) -> Record:
    """What was received: the exact DATA bytes' digest, the envelope and the session.

    ``from_added``: the address every copy got as its From field, because the message had
    none with a domain (certify.from_repair); the field is present only then.
    """
    repaired = {} if from_added is None else {"from_added": from_added}
    return Record.from_fields(
        {
            **repaired,
            "type": "submission",
            "data_sha256": data_sha256,
            "mail_from": mail_from,
            "rcpt_to": list(rcpt_to),
            "client_address": client_address,
            "auth_user": auth_user,
            "tls": tls,
            "received_at": received_at,
            "message_id": message_id,
            "attachments": attachments,
        }
    )


def delivery_record(
    *,
    submission_digest: str,
    recipient: str,
    copy_sha256: str,
    dkim: list[dict[str, str]],
    ack_link_inserted: bool,
    ack_link_reason: str | None,
    certified_at: str,
) -> Record:
    """What was prepared for one recipient: the exact bytes that leave, and how they were signed."""
    return Record.from_fields(
        {
            "type": "delivery",
            "submission": submission_digest,
            "recipient": recipient,
            "copy_sha256": copy_sha256,
            "dkim": dkim,
            "ack_link_inserted": ack_link_inserted,
            "ack_link_reason": ack_link_reason,
            "certified_at": certified_at,
        }
    )


def handoff_record(
    *,
    delivery_digest: str,
    code: int,
    text: str,
    queue_id: str | None,
    upstream_host: str,
    tls: str | None,
    handed_at: str,
) -> Record:
    """What the outbound MTA answered when it took (or refused for good) the copy."""
    return Record.from_fields(
        {
            "type": "handoff",
            "delivery": delivery_digest,
            "code": code,
            "text": text,
            "queue_id": queue_id,
            "upstream_host": upstream_host,
            "tls": tls,
            "handed_at": handed_at,
        }
    )


def report_record(
    *,
    delivery_digest: str,
    report_sha256: str,
    format: str,
    reporting_mta: str | None,
    action: str,
    status: str,
    remote_mta: str | None,
    diagnostic: str | None,
    last_attempt: str | None,
    received_from: str,
    received_at: str,
) -> Record:
    """A delivery status report received for one copy: what the reporting MTA says happened at
    the member's server, and the SHA-256 of the report's exact bytes (kept in the bundle)."""
    return Record.from_fields(
        {
            "type": "report",
            "delivery": delivery_digest,
            "report_sha256": report_sha256,
            "format": format,
            "reporting_mta": reporting_mta,
            "action": action,
            "status": status,
            "remote_mta": remote_mta,
            "diagnostic": diagnostic,
            "last_attempt": last_attempt,
            "received_from": received_from,
            "received_at": received_at,
        }
    )


def receipt_record(
    *,
    delivery_digest: str,
    kind: str,
    at: str,
    ip_commitment: str,
    user_agent_commitment: str,
) -> Record:
    """A member's acknowledgment (or a recorded fetch) of one delivered copy."""
    if kind not in ("acknowledged", "fetched"):
        raise ValueError(f"unknown receipt kind {kind!r}")
    body = (
        _RECEIPT_JSON % tuple(map(encode_basestring, (at, delivery_digest, ip_commitment, kind, user_agent_commitment)))
    ).encode("utf-8")
    return Record(body=body, digest=sha256_hex(body))


def disclosure_record(
    *, submission_digest: str, deliveries: list[str], token_sha256s: list[str], scope: str | None, at: str
) -> Record:
    """A proof bundle was made that carries these deliveries' copies, and so the acknowledgment
    tokens they hold (by SHA-256): from then on those tokens acknowledge nothing."""
    return Record.from_fields(
        {
            "type": "disclosure",
            "submission": submission_digest,
            "deliveries": deliveries,
            "token_sha256s": token_sha256s,
            "scope": scope,
            "at": at,
        }
    )


def iso_time(timestamp: float) -> str:
    """A Unix time as the ISO 8601 UTC string records carry (microsecond precision): what
    ``datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="microseconds")`` gives,
    with ``Z`` for ``+00:00``, and the same rounding (half to even), pinned by a test.

    Every page fetch writes one; the date and time of day are formatted once a second, which
    took it from about 1.7 to 0.7 us.
    """
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    return f"{_utc_second(int(whole))}.{micros:06d}Z"


@functools.lru_cache(maxsize=64)  # the records written in one second share it
def _utc_second(whole: int) -> str:
    return datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
