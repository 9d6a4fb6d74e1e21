"""Retention: raw IP and user agent go after privacy.retention_days, message
files after retention.messages_days when set; evidence records never."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from pathlib import Path

import pytest

from relay.cli import main
from relay.config import Config
from relay.errors import NotFoundError
from relay.evidence.records import Record, commitment, iso_time, receipt_record, submission_record
from relay.ops.retention import DAY, purge
from relay.store import FetchWrite, PersonalData, ReceiptWrite, Store
from tests.support.deliveries import make_delivery
from tests.support.relay import relay_config, running

NOW = 1_790_000_000.0


def config(*, privacy_days: int = 365, messages_days: int = 0) -> Config:
    base = Config()
    return dataclasses.replace(
        base,
        privacy=dataclasses.replace(base.privacy, retention_days=privacy_days),
        retention=dataclasses.replace(base.retention, messages_days=messages_days),
    )


async def submit(store: Store, name: str, *, age_days: float, state: str, body: str | None = None,
                 copy_in_database: bool = False, original_in_database: bool = False) -> dict:
    """A submission with one delivery in ``state`` and its sent copy, as the relay leaves them
    (small ones in the database, large ones as files)."""
    received = NOW - age_days * DAY
    data = (body or f"Subject: {name}\r\n\r\nConvocation {name}.\r\n").encode()
    data_sha = hashlib.sha256(data).hexdigest() if original_in_database else await store.put_blob(data)
    copy = b"DKIM-Signature: ...\r\n" + data
    copy_sha = hashlib.sha256(copy).hexdigest() if copy_in_database else await store.put_blob(copy)
    record = submission_record(
        data_sha256=data_sha, mail_from="mairie@example.org", rcpt_to=["elu@example.org"],
        client_address="127.0.0.1", auth_user=None, tls=None, received_at=iso_time(received),
        message_id=f"<{name}@example.org>", attachments=[],
    )
    async with store.transaction() as db:
        if original_in_database:
            await Store.insert_bytes(db, data_sha, data)
        await Store.insert_record(db, record, submission_id=name, now=received)
        await Store.insert_submission(
            db,
            {"id": name, "received_at": received, "mail_from": "mairie@example.org", "client_address": "127.0.0.1",
             "size": len(data), "data_sha256": data_sha, "record_digest": record.digest},
            [("elu@example.org", "[]")],
        )
    (delivery,) = await store.delivery_states(name)
    async with store.transaction() as db:
        if copy_in_database:
            await Store.insert_bytes(db, copy_sha, copy)
        await Store.set_delivery_copy(db, delivery.id, copy_sha, record.digest, received)
        attempt = {"delivery_id": delivery.id, "started_at": received, "finished_at": received,
                   "outcome": "delivered" if state == "delivered" else "deferred", "code": 250, "reply": "ok"}
        await Store.finish_attempt(db, attempt, state=state, next_attempt_at=received + 300, handoff_digest=None)
    return {"data": data_sha, "copy": copy_sha, "delivery": delivery.id, "digest": record.digest}


async def acknowledge(store: Store, message: dict, *, age_days: float) -> None:
    at = NOW - age_days * DAY
    salt = bytes(16)
    record = receipt_record(
        delivery_digest=message["digest"], kind="acknowledged", at=iso_time(at),
        ip_commitment=commitment(salt, "192.0.2.7"), user_agent_commitment=commitment(salt, "Firefox"),
    )
    personal = PersonalData(salt=salt, ip="192.0.2.7", user_agent="Firefox")
    fetch = FetchWrite(delivery_id=message["delivery"], at=at, method="GET", classification="person",
                       reason="test", personal=personal, record=Record.from_fields({**record.fields, "kind": "fetched"}))
    await store.write_tracker_events([fetch], [ReceiptWrite(delivery_id=message["delivery"], at=at,
                                                            personal=personal, record=record)])


async def everything(store: Store) -> tuple[list, list, list]:
    records = [tuple(r) for r in await store.fetchall("SELECT digest, body FROM records ORDER BY digest")]
    leaves = [tuple(r) for r in await store.fetchall("SELECT digest FROM anchor_leaves ORDER BY digest")]
    personal = [tuple(r) for r in await store.fetchall("SELECT ip, user_agent FROM personal ORDER BY id")]
    return records, leaves, personal


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(tmp_path / "data")
    yield store
    await store.close()


async def test_personal_data_goes_after_its_retention_and_records_stay(store: Store):
    old = await submit(store, "old", age_days=400, state="delivered")
    recent = await submit(store, "recent", age_days=5, state="delivered")
    await acknowledge(store, old, age_days=399)
    await acknowledge(store, recent, age_days=4)
    records, leaves, personal = await everything(store)
    assert len(personal) == 4

    summary = await purge(store, config(privacy_days=365), now=NOW)

    assert summary.personal_rows == 2
    after_records, after_leaves, after_personal = await everything(store)
    assert (after_records, after_leaves) == (records, leaves)  # evidence is never purged
    assert after_personal == [("192.0.2.7", "Firefox")] * 2  # only the recent acknowledgment's
    receipts = await store.fetchall("SELECT delivery_id, personal_id FROM receipts ORDER BY delivery_id")
    assert [r["personal_id"] is None for r in receipts] == [True, False]
    assert summary.messages == 0  # messages_days unset: bodies are the proof, kept
    for message in (old, recent):
        assert await store.get_blob(message["data"])


async def test_message_files_go_after_messages_days_unless_still_needed(store: Store):
    old = await submit(store, "old", age_days=100, state="delivered", copy_in_database=True)
    small = await submit(store, "old-small", age_days=100, state="delivered", copy_in_database=True,
                         original_in_database=True)
    queued = await submit(store, "queued", age_days=100, state="deferred", copy_in_database=True)
    shared = await submit(store, "shared-old", age_days=100, state="delivered", body="Subject: same\r\n\r\nx\r\n")
    await submit(store, "shared-new", age_days=1, state="delivered", body="Subject: same\r\n\r\nx\r\n")
    recent = await submit(store, "recent", age_days=1, state="delivered")
    records, leaves, _ = await everything(store)

    summary = await purge(store, config(messages_days=30), now=NOW)

    # the old message (a file) and its sent copy (in the database); the small one's two, in the database
    assert summary.messages == 4
    for sha in (old["data"], old["copy"], small["data"], small["copy"]):
        with pytest.raises(NotFoundError):
            await store.get_blob(sha)
        assert await store.message_purged_at(sha) == NOW
    for sha in (queued["data"], queued["copy"], shared["data"], recent["data"], recent["copy"]):
        assert await store.get_blob(sha)
        assert await store.message_purged_at(sha) is None
    assert (await everything(store))[:2] == (records, leaves)
    assert (await store.get_record(old["digest"])).fields["data_sha256"] == old["data"]
    assert (await purge(store, config(messages_days=30), now=NOW)).messages == 0


async def test_an_interrupted_purge_deletes_its_files_next_time(store: Store):
    old = await submit(store, "old", age_days=100, state="delivered")
    await store.purge_messages(NOW - 30 * DAY, NOW)  # marked purged, files not yet deleted (a crash)
    assert await store.get_blob(old["data"])
    summary = await purge(store, config(), now=NOW)  # even with messages_days unset now
    assert summary.messages == 2
    with pytest.raises(NotFoundError):
        await store.get_blob(old["data"])


def test_cli_purge(tmp_path: Path, capsys):
    (tmp_path / "estampille.toml").write_text('data_dir = "data"\n[retention]\nmessages_days = 30\n')

    async def create() -> None:  # the relay's data directory, still empty
        await (await Store.open(tmp_path / "data")).close()

    asyncio.run(create())
    assert main(["purge", "--config", str(tmp_path / "estampille.toml")]) == 0
    assert "0 messages" in capsys.readouterr().out


async def test_the_service_purges_periodically(tmp_path: Path):
    """The running relay applies privacy.retention_days itself, every retention.purge_interval."""
    config = relay_config(tmp_path / "data", privacy={"retention_days": 0}, retention={"purge_interval": 1})
    now = [NOW]
    async with running(config, clock=lambda: now[0]) as service:
        made = await make_delivery(service.store, now=NOW)
        await acknowledge(service.store, {"delivery": made.delivery_id, "digest": made.delivery_digest},
                          age_days=-1)  # recorded one day after the clock's "now": not yet due
        assert (await service.store.fetchone("SELECT COUNT(*) FROM personal"))[0] == 2
        now[0] = NOW + 2 * DAY
        deadline = time.monotonic() + 20
        while (await service.store.fetchone("SELECT COUNT(*) FROM personal"))[0]:
            assert time.monotonic() < deadline, "the periodic purge never ran"
            await asyncio.sleep(0.05)
        assert (await service.store.fetchone("SELECT COUNT(*) FROM receipts"))[0] == 1
