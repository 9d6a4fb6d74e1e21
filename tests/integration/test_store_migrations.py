"""Store.open migrates a database of any earlier schema version, keeping its rows."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading

import pytest

from relay.errors import StoreError
from relay.evidence.records import commitment, iso_time, receipt_record
from relay.ops import notify
from relay.ops.notify import Notifier
from relay.store import DB_NAME, MIGRATIONS, SCHEMA_VERSION, Store
from tests.integration.test_signals import notify_socket
from tests.support.relay import relay_config, running


def _database_at(path, version: int) -> sqlite3.Connection:
    """A database as an Estampille of schema ``version`` left it."""
    db = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:version]:
        db.executescript(script)
    db.execute(f"PRAGMA user_version={version}")
    return db


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
async def test_a_database_of_an_earlier_version_is_migrated_to_the_current_one(tmp_path, version):
    _database_at(tmp_path / DB_NAME, version).close()
    store = await Store.open(tmp_path)
    try:
        assert (await store.fetchone("PRAGMA user_version"))[0] == SCHEMA_VERSION
        assert (await store.fetchone("PRAGMA integrity_check"))[0] == "ok"
        assert (await store.fetchone("PRAGMA foreign_key_check")) is None
    finally:
        await store.close()


def _delivered_message(db: sqlite3.Connection) -> None:
    """Submission 's1' delivered to one member (delivery 1), with the records of both."""
    for digest, kind in (("0" * 64, "submission"), ("1" * 64, "delivery")):
        db.execute("INSERT INTO records (digest, type, body, created_at) VALUES (?, ?, '{}', 1.0)", (digest, kind))
    db.execute("INSERT INTO submissions (id, received_at, mail_from, client_address, message_id, subject, size,"
               " data_sha256, record_digest) VALUES ('s1', 1.0, 'mairie@commune.example', '127.0.0.1', '<m@x>',"
               " 'Conseil', 10, ?, ?)", ("a" * 64, "0" * 64))
    db.execute("INSERT INTO deliveries (submission_id, recipient, state, next_attempt_at, record_digest, updated_at)"
               " VALUES ('s1', 'elu@commune.example', 'delivered', 0, ?, 0)", ("1" * 64,))


async def test_a_migration_that_would_break_a_reference_is_rolled_back(tmp_path):
    db = _database_at(tmp_path / DB_NAME, 7)
    _delivered_message(db)
    db.execute("UPDATE deliveries SET record_digest = ?", ("9" * 64,))  # a record that does not exist
    db.close()

    threads = threading.active_count()
    with pytest.raises(StoreError, match="migration to schema version 8 left 1 broken references"):
        await Store.open(tmp_path)
    assert threading.active_count() == threads  # its connection is closed
    db = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (7,)
        assert "id" not in [column[1] for column in db.execute("PRAGMA table_info(records)")]
    finally:
        db.close()


async def test_a_database_of_a_newer_version_is_refused_and_left_alone(tmp_path):
    db = _database_at(tmp_path / DB_NAME, SCHEMA_VERSION)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    threads = threading.active_count()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this Estampille"):
        await Store.open(tmp_path)
    assert threading.active_count() == threads
    db = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    finally:
        db.close()


async def test_acknowledgment_tokens_keep_their_links_through_migration_7(tmp_path):
    db = _database_at(tmp_path / DB_NAME, 6)
    _delivered_message(db)
    token_sha256 = hashlib.sha256(b"token-of-the-member-0123456789").hexdigest()
    db.execute("INSERT INTO ack_tokens VALUES (?, 1, 'https://example.org/a?b=1&c=2#d', 2.0)", (token_sha256,))
    db.close()

    store = await Store.open(tmp_path)
    try:
        links = await store.find_ack_links([token_sha256, "f" * 64])
        assert list(links) == [token_sha256]
        link = links[token_sha256]
        assert (link.delivery_id, link.recipient, link.subject) == (1, "elu@commune.example", "Conseil")
        assert (link.target_url, link.token_created_at) == ("https://example.org/a?b=1&c=2#d", 2.0)
        table = await store.fetchone("SELECT sql FROM sqlite_master WHERE name = 'ack_tokens'")
        assert "WITHOUT ROWID" in table["sql"]
        indexes = [row["name"] for row in await store.fetchall("PRAGMA index_list(ack_tokens)")]
        assert "ack_tokens_delivery" in indexes
    finally:
        await store.close()


async def test_anchoring_leaves_keep_their_batches_through_migration_8(tmp_path):
    db = _database_at(tmp_path / DB_NAME, 7)
    _delivered_message(db)
    db.execute("INSERT INTO records (digest, type, body, delivery_id, created_at) VALUES (?, 'receipt', '{}', 1, 3.0)",
               ("2" * 64,))
    db.execute("INSERT INTO anchor_batches (id, root, created_at, leaves, state, next_attempt_at)"
               " VALUES (1, x'00', 2.0, 2, 'pending', 0)")
    db.execute("INSERT INTO anchor_leaves (digest, queued_at, batch_id, nonce, position) VALUES"
               " (?, 1.0, 1, x'0102', 1), (?, 1.0, 1, x'0304', 0), (?, 3.0, NULL, NULL, NULL)",
               ("0" * 64, "1" * 64, "2" * 64))
    db.close()

    store = await Store.open(tmp_path)
    try:
        for digest, nonce, position in (("0" * 64, b"\x01\x02", 1), ("1" * 64, b"\x03\x04", 0)):
            leaf = await store.anchor_leaf(digest)
            assert (leaf.digest, leaf.batch_id, leaf.nonce, leaf.position) == (digest, 1, nonce, position)
        assert await store.unbatched_leaves(10) == [(3, "2" * 64)]

        # A record stored since is queued under its own, next id.
        salt = b"s" * 16
        record = receipt_record(delivery_digest="1" * 64, kind="fetched", at=iso_time(4.0),
                                ip_commitment=commitment(salt, "192.0.2.1"),
                                user_agent_commitment=commitment(salt, "Mozilla/5.0"))
        async with store.transaction() as db:
            await Store.insert_record(db, record, delivery_id=1, now=4.0)
        assert await store.unbatched_leaves(10) == [(3, "2" * 64), (4, record.digest)]
        anchoring = await store.records_anchoring(["0" * 64, "2" * 64, record.digest])
        assert [anchoring[d].batch_id for d in ("0" * 64, "2" * 64, record.digest)] == [1, None, None]
        # References are enforced again once the migrations are done.
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            async with store.transaction() as db:
                await db.execute("INSERT INTO anchor_leaves (record_id, digest, queued_at) VALUES (99, ?, 5.0)",
                                 ("3" * 64,))
    finally:
        await store.close()


async def test_the_relay_logs_its_migration_and_keeps_systemd_waiting_meanwhile(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    data.mkdir()
    _database_at(data / DB_NAME, 7).close()
    monkeypatch.setattr(notify, "EXTEND_EVERY", 0.001)  # rather than every 10 s
    caplog.set_level(logging.INFO, logger="estampille.store")
    received: list[list[str]] = []
    with notify_socket() as (path, manager):
        manager.settimeout(0.5)

        def listen() -> None:  # as systemd does, so that a full queue never blocks the sender
            with contextlib.suppress(TimeoutError):
                while True:
                    received.append(manager.recv(4096).decode().splitlines())

        listener = threading.Thread(target=listen)
        listener.start()
        async with running(relay_config(data), notifier=Notifier.from_environ({"NOTIFY_SOCKET": path})):
            pass
        listener.join()
    assert received and all(lines == [
        "EXTEND_TIMEOUT_USEC=30000000", "STATUS=opening the database: migrating its schema can take minutes"
    ] for lines in received)
    messages = [r.getMessage() for r in caplog.records if r.name == "estampille.store"]
    assert messages[0] == f"migrating the database in {data} from schema version 7 to 8"
    assert messages[1].startswith("migrated to schema version 8 in ")
