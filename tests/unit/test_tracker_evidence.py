"""The receipt record every page fetch and acknowledgment builds: its bytes are the
canonical JSON of its fields, whatever the strings hold."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.records import (
    RECORD_VERSION,
    Record,
    canonical_json,
    receipt_record,
    sha256_hex,
)

# Every code point, lone surrogates and control characters included: the JSON encoder escapes some.
ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)


def canonical_receipt(**fields: str) -> bytes:
    return canonical_json({
        "type": "receipt", "delivery": fields["delivery_digest"], "kind": fields["kind"], "at": fields["at"],
        "ip_commitment": fields["ip_commitment"], "user_agent_commitment": fields["user_agent_commitment"],
        "version": RECORD_VERSION,
    })


@settings(max_examples=2000, deadline=None)
@given(delivery_digest=ANY_TEXT, kind=st.sampled_from(["fetched", "acknowledged"]), at=ANY_TEXT,
       ip_commitment=ANY_TEXT, user_agent_commitment=ANY_TEXT)
def test_receipt_record_bytes_are_its_canonical_json(**fields: str) -> None:
    try:
        expected = canonical_receipt(**fields)
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form: no record either way
        try:
            receipt_record(**fields)
        except UnicodeEncodeError:
            return
        raise AssertionError("receipt_record accepted what canonical_json refuses") from None
    record = receipt_record(**fields)
    assert record.body == expected
    assert record.digest == sha256_hex(expected)
    assert Record.from_bytes(record.body) == record


def test_a_typical_receipt_record_is_pinned() -> None:
    record = receipt_record(delivery_digest="d" * 64, kind="fetched", at="2026-11-29T08:54:44.123456Z",
                            ip_commitment="1" * 64, user_agent_commitment="2" * 64)
    assert record.body == (
        b'{"at":"2026-11-29T08:54:44.123456Z","delivery":"' + b"d" * 64 + b'","ip_commitment":"' + b"1" * 64
        + b'","kind":"fetched","type":"receipt","user_agent_commitment":"' + b"2" * 64 + b'","version":1}'
    )
