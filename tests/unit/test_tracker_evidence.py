"""The receipt record every page fetch and acknowledgment builds: its bytes are the
canonical JSON of its fields, whatever the strings hold; its time, salt and the page's
anti-forgery value, made the fast way, are what the standard library makes."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.evidence.records import (
    RECORD_VERSION,
    Record,
    canonical_json,
    iso_time,
    receipt_record,
    sha256_hex,
)
from tracker.antiforgery import FormKey
from tracker.salts import POOL_SALTS, SALT_BYTES, Salts

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


def datetime_iso_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@settings(max_examples=3000, deadline=None)
@given(st.one_of(
    st.floats(min_value=0, max_value=4e9),
    # fractions that round up to the next second, or sit half-way between two microseconds
    st.builds(lambda s, f: s + f, st.integers(0, 4 * 10**9),
              st.sampled_from([0.9999995, 0.99999949999, 0.9999999999, 0.0000005, 0.0000015, 0.0000025, 0.5])),
))
def test_iso_time_is_what_datetime_gives(timestamp: float) -> None:
    assert iso_time(timestamp) == datetime_iso_time(timestamp)


@settings(max_examples=500, deadline=None)
@given(secret=st.binary(min_size=1, max_size=200), token=st.text(alphabet="ABCxyz019_-", max_size=130))
def test_form_key_is_the_hmac_of_the_token(secret: bytes, token: str) -> None:
    expected = hmac.new(secret, b"ack-form\0" + token.encode("ascii"), hashlib.sha256).hexdigest()
    key = FormKey(secret)
    assert key.value(token) == expected
    assert key.is_valid(token, expected)
    assert not key.is_valid(token, expected[:-1] + ("0" if expected[-1] != "0" else "1"))
    assert not key.is_valid(token, None)


def test_salts_are_fresh_across_pools() -> None:
    salts = Salts()
    taken = [salts.take() for _ in range(3 * POOL_SALTS + 5)]
    assert {len(s) for s in taken} == {SALT_BYTES}
    assert len(set(taken)) == len(taken)
