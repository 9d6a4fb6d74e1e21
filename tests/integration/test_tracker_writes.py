"""A group of tracker events written in one transaction: every row lands, whatever the group's size.

Store.write_tracker_events inserts its rows several at a time (TRACKER_ROWS_PER_INSERT); a
group whose size is not a multiple of those counts must still write each fetch and receipt
with its own personal data, record and anchoring leaf.
"""

from __future__ import annotations

import pytest

from relay.evidence.records import commitment, iso_time, receipt_record
from relay.store import FetchWrite, PersonalData, ReceiptWrite, Store
from relay.store.tracker import TRACKER_ROWS_PER_INSERT
from tests.support.deliveries import make_delivery

T0 = 1_764_400_000.0


def _personal(n: int) -> PersonalData:
    return PersonalData(salt=n.to_bytes(16, "big"), ip=f"192.0.2.{n % 250}", user_agent=f"agent {n}")


def _record(delivery_digest: str, kind: str, at: float, personal: PersonalData):
    return receipt_record(delivery_digest=delivery_digest, kind=kind, at=iso_time(at),
                          ip_commitment=commitment(personal.salt, personal.ip),
                          user_agent_commitment=commitment(personal.salt, personal.user_agent))


@pytest.mark.parametrize("count", [1, TRACKER_ROWS_PER_INSERT[0] + TRACKER_ROWS_PER_INSERT[1] + 3, 200])
async def test_every_fetch_and_first_receipt_of_a_group_is_written_with_its_own_data(tmp_path, count):
    store = await Store.open(tmp_path)
    try:
        one, two = await make_delivery(store, now=T0), await make_delivery(store, now=T0, recipient="b@example.net")
        fetches = []
        for n in range(count):
            made = (one, two)[n % 2]
            personal, at = _personal(n), T0 + n
            fetches.append(FetchWrite(made.delivery_id, at, "GET", "person", f"reason {n}", personal,
                                      _record(made.delivery_digest, "fetched", at, personal)))
        receipts = [
            ReceiptWrite(made.delivery_id, T0 + 1000 + n, _personal(10_000 + n),
                         _record(made.delivery_digest, "acknowledged", T0 + 1000 + n, _personal(10_000 + n)))
            for n, made in enumerate((one, one, two))
        ]
        results = await store.write_tracker_events(fetches, receipts)

        assert results == [(T0 + 1000, True), (T0 + 1000, False), (T0 + 1002, True)]
        rows = await store.fetchall(
            "SELECT f.delivery_id, f.at, f.reason, f.record_digest, p.salt, p.ip, p.user_agent, p.created_at"
            " FROM fetches f JOIN personal p ON p.id = f.personal_id ORDER BY f.id"
        )
        assert [tuple(row) for row in rows] == [
            (f.delivery_id, f.at, f.reason, f.record.digest, f.personal.salt, f.personal.ip, f.personal.user_agent, f.at)
            for f in fetches
        ]
        receipt_rows = await store.fetchall(
            "SELECT r.delivery_id, r.record_digest, p.ip FROM receipts r JOIN personal p ON p.id = r.personal_id"
            " ORDER BY r.delivery_id"
        )
        assert [tuple(row) for row in receipt_rows] == [
            (r.delivery_id, r.record.digest, r.personal.ip) for r in (receipts[0], receipts[2])
        ]
        written = [*(f.record for f in fetches), receipts[0].record, receipts[2].record]
        for record in written:
            assert await store.get_record(record.digest) == record
        leaves = await store.fetchall(
            f"SELECT COUNT(*) FROM anchor_leaves WHERE digest IN ({', '.join('?' * len(written))})",
            [r.digest for r in written],
        )
        assert leaves[0][0] == len(written)
    finally:
        await store.close()
