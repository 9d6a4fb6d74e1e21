"""Which page fetches were the member's own opening, for the admin pages.

A member who clicks within tracker.scanner_window of the delivery is classified as a likely
scanner (a scanner's fetch comes within seconds). When the acknowledgment then comes from the
same client (address and user agent, kept until the purge) within that window, the fetch was
the member's: the page says so. The anchored fetch record keeps its classification.
"""

from __future__ import annotations

from relay.store import Store


async def own_openings(store: Store, submission_id: str, window: float) -> set[str]:
    """The record digests of the fetches of ``submission_id`` that the acknowledgment followed
    from the same client within ``window`` seconds."""
    rows = await store.fetchall(
        "SELECT f.record_digest FROM fetches f"
        " JOIN deliveries d ON d.id = f.delivery_id"
        " JOIN receipts r ON r.delivery_id = f.delivery_id"
        " JOIN personal pf ON pf.id = f.personal_id"
        " JOIN personal pr ON pr.id = r.personal_id"
        " WHERE d.submission_id = ? AND f.classification = 'scanner' AND f.method != 'HEAD'"
        " AND pf.ip = pr.ip AND pf.user_agent = pr.user_agent AND r.at >= f.at AND r.at - f.at <= ?",
        (submission_id, window),
    )
    return {row[0] for row in rows if row[0] is not None}
