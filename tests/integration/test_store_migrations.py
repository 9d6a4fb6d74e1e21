"""Store.open migrates a database of any earlier schema version, keeping its rows."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from relay.store import DB_NAME, MIGRATIONS, SCHEMA_VERSION, Store


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


async def test_acknowledgment_tokens_keep_their_links_through_migration_7(tmp_path):
    db = _database_at(tmp_path / DB_NAME, 6)
    db.execute("INSERT INTO submissions (id, received_at, mail_from, client_address, message_id, subject, size,"
               " data_sha256) VALUES ('s1', 1.0, 'mairie@commune.example', '127.0.0.1', '<m@x>', 'Conseil', 10, ?)",
               ("0" * 64,))
    db.execute("INSERT INTO deliveries (submission_id, recipient, state, next_attempt_at, record_digest, updated_at)"
               " VALUES ('s1', 'elu@commune.example', 'delivered', 0, ?, 0)", ("1" * 64,))
    token_sha256 = hashlib.sha256(b"token-of-the-member-0123456789").hexdigest()
    db.execute("INSERT INTO ack_tokens VALUES (?, 1, 'https://example.org/a?b=1&c=2#d', 2.0)", (token_sha256,))
    db.close()

    store = await Store.open(tmp_path)
    try:
        links = await store.find_ack_links([token_sha256, "f" * 64])
        assert list(links) == [token_sha256]
        link = links[token_sha256]
        assert (link["delivery_id"], link["recipient"], link["subject"]) == (1, "elu@commune.example", "Conseil")
        assert (link["target_url"], link["token_created_at"]) == ("https://example.org/a?b=1&c=2#d", 2.0)
        table = await store.fetchone("SELECT sql FROM sqlite_master WHERE name = 'ack_tokens'")
        assert "WITHOUT ROWID" in table["sql"]
        indexes = [row["name"] for row in await store.fetchall("PRAGMA index_list(ack_tokens)")]
        assert "ack_tokens_delivery" in indexes
    finally:
        await store.close()
