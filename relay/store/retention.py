"""Backups, integrity, and the retention of message files."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from relay.errors import StoreError
from relay.store.engine import Database
from relay.store.states import FINAL_STATES, sql_list

_REFERENCED_BLOBS_SQL = (
    "SELECT data_sha256 FROM submissions UNION SELECT copy_sha256 FROM deliveries"
    " WHERE copy_sha256 IS NOT NULL EXCEPT SELECT sha256 FROM purged_messages"
    " EXCEPT SELECT sha256 FROM message_bytes"
)
# The digests of messages and copies named only by submissions received before ? whose every
# delivery is final, not yet purged.
_PURGEABLE_SQL = f"""
    WITH old AS (
        SELECT s.id FROM submissions s WHERE s.received_at < ? AND NOT EXISTS (
            SELECT 1 FROM deliveries d
            WHERE d.submission_id = s.id AND d.state NOT IN ({sql_list(FINAL_STATES)}))
    ),
    named AS (
        SELECT id AS submission_id, data_sha256 AS sha256 FROM submissions
        UNION ALL
        SELECT submission_id, copy_sha256 FROM deliveries WHERE copy_sha256 IS NOT NULL
    )
    SELECT sha256 FROM named WHERE submission_id IN (SELECT id FROM old)
    EXCEPT SELECT sha256 FROM named WHERE submission_id NOT IN (SELECT id FROM old)
    EXCEPT SELECT sha256 FROM purged_messages
"""


class Retention(Protocol):
    """Backups, integrity checks and the purge of old message files (relay.ops)."""

    async def backup_database(self, dest: Path) -> None: ...
    async def integrity_check(self) -> list[str]: ...
    @staticmethod
    async def blobs_named_in(db_file: Path) -> set[str]: ...
    async def purge_messages(self, received_before: float, now: float) -> int: ...
    async def purged_messages_present(self) -> list[str]: ...
    async def message_purged_at(self, sha256: str) -> float | None: ...


class SqliteRetention:
    """:class:`Retention` on SQLite."""

    db: Database

    blob_path: Callable[[str], Path]  # blobs.MessageFiles's

    async def backup_database(self, dest: Path) -> None:
        """Copy the database to ``dest`` with SQLite's online backup API.

        One step over all pages: the copy is one consistent snapshot, taken under a
        read transaction that (in WAL mode) does not block the writers.
        """
        await self.db.backup(dest)

    async def integrity_check(self) -> list[str]:
        """SQLite's integrity check: an empty list when the database is sound."""
        rows = await self.db.fetchall("PRAGMA integrity_check")
        problems = [row[0] for row in rows if row[0] != "ok"]
        rows = await self.db.fetchall("PRAGMA foreign_key_check")
        problems += [f"{row[0]} row {row[1]} names a missing {row[2]}" for row in rows]
        return problems

    @staticmethod
    async def blobs_named_in(db_file: Path) -> set[str]:
        """SHA-256 of every message file the rows of ``db_file`` name and retention has not
        purged. Read-only, on a file no store has open: a backup checks its snapshot with
        it, not the live database, which has moved on since."""

        def read() -> set[str]:
            conn = sqlite3.connect(db_file.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                return {row[0] for row in conn.execute(_REFERENCED_BLOBS_SQL).fetchall()}
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(read)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {db_file}: {exc}") from exc

    async def purge_messages(self, received_before: float, now: float) -> int:
        """Mark as purged the message files of submissions received before ``received_before``,
        and delete the copies the database holds for them.

        Only submissions whose every delivery is final (delivered or failed): a
        queued message still needs its bytes. A file also named by a submission
        that is kept (identical bytes) is kept. Returns how many copies held in the
        database were deleted; the caller then deletes the files (:meth:`delete_blob`).
        """

        def purge(conn: sqlite3.Connection) -> int:
            digests = [row[0] for row in conn.execute(_PURGEABLE_SQL, (received_before,)).fetchall()]
            conn.executemany(
                "INSERT INTO purged_messages (sha256, purged_at) VALUES (?, ?)", [(d, now) for d in digests]
            )
            return conn.executemany("DELETE FROM message_bytes WHERE sha256 = ?", [(d,) for d in digests]).rowcount

        return await self.db.write_fn(purge)

    async def purged_messages_present(self) -> list[str]:
        """Purged digests whose file is still on disk (a purge interrupted before deleting it)."""
        rows = await self.db.fetchall("SELECT sha256 FROM purged_messages")
        return [row[0] for row in rows if self.blob_path(row[0]).exists()]

    async def message_purged_at(self, sha256: str) -> float | None:
        """When retention deleted this message file, or None if it was never purged."""
        row = await self.db.fetchone("SELECT purged_at FROM purged_messages WHERE sha256 = ?", (sha256,))
        return None if row is None else row[0]

