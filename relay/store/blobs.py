"""Message bytes: up to INLINE_MAX octets in the database (message_bytes), larger ones as
files named by their SHA-256 under the data directory, written durably before any row names them."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from relay.errors import DiskFullError, NotFoundError, StoreError
from relay.store.durable import fsync_directory, write_durably
from relay.store.engine import SQL_CHUNK, Database, Executor

BLOB_DIR = "messages"
# Received messages and certified copies up to this size live in the database (message_bytes),
# written in the transaction of the rows that name them: that commit's one WAL fsync covers
# them, where a file costs its own fsyncs, a new inode and a directory entry. Larger ones are
# files in BLOB_DIR: bounded so the write-ahead log stays small and a copy is bound once.
INLINE_MAX = 256 * 1024

class MessageBytes(Protocol):
    """Where intake, certify, delivery and retention keep and find message bytes."""

    data_dir: Path

    def blob_path(self, sha256: str) -> Path: ...
    async def put_blob(self, data: bytes) -> str: ...
    async def get_blob(self, sha256: str) -> bytes: ...
    @staticmethod
    async def insert_bytes(db: Executor, sha256: str, data: bytes) -> None: ...
    async def inline_bytes(self, digests: Sequence[str]) -> dict[str, bytes]: ...
    def check_free_space(self, min_free_bytes: int) -> None: ...
    async def delete_blob(self, sha256: str) -> bool: ...

class MessageFiles:
    """Message bytes in SQLite and in files under ``blob_dir``."""

    db: Database
    data_dir: Path
    blob_dir: Path

    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    async def put_blob(self, data: bytes) -> str:
        """Write ``data`` durably under its SHA-256 and return the hex digest."""
        return await asyncio.to_thread(self._put_blob_sync, data)

    def _put_blob_sync(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        final = self.blob_path(digest)
        if final.exists():
            return digest
        final.parent.mkdir(exist_ok=True, mode=0o700)
        try:
            write_durably(final, data)
        except OSError as exc:
            raise StoreError(f"cannot write message file {final}: {exc.strerror}") from exc
        return digest

    async def get_blob(self, sha256: str) -> bytes:
        """The bytes stored under ``sha256``: held in the database (INLINE_MAX), or a message file."""
        inline = await self.inline_bytes([sha256])
        if sha256 in inline:
            return inline[sha256]
        try:
            return await asyncio.to_thread(self.blob_path(sha256).read_bytes)
        except FileNotFoundError as exc:
            raise NotFoundError(f"message file {sha256} is missing") from exc

    @staticmethod
    async def insert_bytes(db: Executor, sha256: str, data: bytes) -> None:
        """Store a message or a copy of at most INLINE_MAX octets in the caller's transaction."""
        await db.execute("INSERT OR IGNORE INTO message_bytes (sha256, data) VALUES (?, ?)", (sha256, data))

    async def inline_bytes(self, digests: Sequence[str]) -> dict[str, bytes]:
        """The messages and copies among ``digests`` that the database holds, by digest."""
        found: dict[str, bytes] = {}
        for start in range(0, len(digests), SQL_CHUNK):
            chunk = digests[start:start + SQL_CHUNK]
            rows = await self.db.fetchall(
                f"SELECT sha256, data FROM message_bytes WHERE sha256 IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update((row[0], bytes(row[1])) for row in rows)
        return found

    def check_free_space(self, min_free_bytes: int) -> None:
        """Raise DiskFullError when the data directory's file system is nearly full."""
        free = shutil.disk_usage(self.data_dir).free
        if free < min_free_bytes:
            raise DiskFullError(f"only {free // 2**20} MB free in {self.data_dir}")


    async def delete_blob(self, sha256: str) -> bool:
        """Delete a message file (retention only); False if it was already gone."""

        def unlink() -> bool:
            path = self.blob_path(sha256)
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            fsync_directory(path.parent)
            return True

        try:
            return await asyncio.to_thread(unlink)
        except OSError as exc:
            raise StoreError(f"cannot delete message file {sha256}: {exc.strerror}") from exc
