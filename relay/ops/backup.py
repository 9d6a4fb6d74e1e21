"""Backup and restore of a data directory, while the relay runs.

A backup is a directory laid out like the data directory, plus a manifest:

    DEST/estampille.sqlite3   one consistent snapshot (SQLite's online backup API)
    DEST/messages/...         the message files, and every other file of the data directory
    DEST/backup.json          format, time, schema version, SHA-256 and size of every file

Why this order is consistent: message files are content-addressed, written and
fsync'd before any row names them, and never modified. So the database is
copied first; every file its snapshot names already exists and is copied next.
Files written after the snapshot are copied too and are harmless. A message
file is checked against its name while it is copied, so a backup never carries
silent corruption forward.

Restore copies a checked backup into an empty data directory (``force``
empties a non-empty one first), then opens the database and runs SQLite's
integrity check. It holds the data directory's lock throughout, so it refuses
to start while a relay runs there, and no relay starts until it is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.errors import BackupError, StoreError
from relay.ops.datalock import LOCK_FILE, DataDirLock
from relay.store import BLOB_DIR, DB_NAME, SCHEMA_VERSION, Store
from relay.store.durable import fsync_directory, write_durably

MANIFEST = "backup.json"
FORMAT = 1
CHUNK = 1 << 20
# SQLite's side files belong to the live database, never to a copy.
DB_SIDE_FILES = frozenset({DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal"})
# Files of the running process, not data: neither backed up nor replaced by a restore.
RUNTIME_FILES = frozenset({LOCK_FILE})
TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class BackupSummary:
    """What a backup holds (also what a restore brought back)."""

    path: Path
    created_at: float
    schema_version: int
    files: int
    size: int


async def backup_data_dir(data_dir: Path, dest: Path, *, now: float) -> BackupSummary:
    """Open the store of ``data_dir`` (which must exist) and back it up into ``dest``."""
    if not await asyncio.to_thread((data_dir / DB_NAME).is_file):
        raise BackupError(f"no Estampille database in {data_dir}")
    store = await Store.open(data_dir)
    try:
        return await backup(store, dest, now=now)
    finally:
        await store.close()


async def backup(store: Store, dest: Path, *, now: float) -> BackupSummary:
    """Write a consistent backup of ``store`` into ``dest`` (absent or empty)."""
    if await asyncio.to_thread(_is_inside, dest, store.data_dir):
        raise BackupError(f"backup destination {dest} is inside the data directory {store.data_dir}")
    _prepare_empty(dest, force=False, what="backup destination")
    db_file = dest / DB_NAME
    await store.backup_database(db_file)
    try:
        db_file.chmod(0o600)  # SQLite creates it under the caller's umask
        files = {DB_NAME: await asyncio.to_thread(_digest_file, db_file)}
        copied, corrupt = await asyncio.to_thread(_copy_tree, store.data_dir, dest)
    except OSError as exc:
        raise BackupError(f"cannot write the backup in {dest}: {exc}") from exc
    files.update(copied)
    named = await Store.blobs_named_in(db_file)  # the snapshot's, not the live database's
    missing = sorted(digest for digest in named if _blob_rel(digest) not in files)
    manifest = {
        "format": FORMAT,
        "created_at": now,
        "schema_version": SCHEMA_VERSION,
        "files": {rel: {"sha256": d, "size": s} for rel, (d, s) in sorted(files.items())},
    }
    await asyncio.to_thread(write_durably, dest / MANIFEST, json.dumps(manifest, indent=1).encode())
    (dest / MANIFEST).chmod(0o600)
    if corrupt or missing:
        problems = [f"{rel} does not match its name" for rel in corrupt]
        problems += [f"message file {digest} is missing" for digest in missing]
        raise BackupError(f"backup written to {dest}, but the data directory is damaged: {'; '.join(problems)}")
    return _summary(dest, manifest)


async def restore(src: Path, data_dir: Path, *, force: bool) -> BackupSummary:
    """Bring the backup ``src`` back into ``data_dir``; refuses a non-empty one unless ``force``."""
    if await asyncio.to_thread(_same_path, src, data_dir):
        raise BackupError(f"{src} is the data directory itself")
    manifest = await asyncio.to_thread(check, src)
    if await asyncio.to_thread(lambda: data_dir.exists() and not data_dir.is_dir()):
        raise BackupError(f"data directory {data_dir} is not a directory")
    try:
        lock = DataDirLock.acquire(data_dir, advice="stop it before restoring")
    except StoreError as exc:
        raise BackupError(str(exc)) from exc
    try:
        _prepare_empty(data_dir, force=force, what="data directory", keep=RUNTIME_FILES)
        names = [rel for rel in manifest["files"] if rel not in RUNTIME_FILES]  # older backups hold relay.lock
        try:
            await asyncio.to_thread(_copy_listed, src, data_dir, names)
        except OSError as exc:
            raise BackupError(f"cannot restore into {data_dir}: {exc}") from exc
        problems = await _check_database(data_dir)
    finally:
        await lock.release()
    if problems:
        raise BackupError(f"restored database fails its integrity check: {'; '.join(problems[:5])}")
    return _summary(data_dir, manifest)


async def _check_database(data_dir: Path) -> list[str]:
    """Open the restored database (running its migrations) and return its integrity problems."""
    try:
        store = await Store.open(data_dir)
    except StoreError as exc:
        raise BackupError(f"restored database does not open: {exc}") from exc
    try:
        return await store.integrity_check()
    finally:
        await store.close()


def check(src: Path) -> dict[str, Any]:
    """Read a backup's manifest and check every file against it; returns the manifest."""
    try:
        manifest = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src} is not an Estampille backup (no readable {MANIFEST})") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{src}: backup format {manifest.get('format')!r} is not {FORMAT}")
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise BackupError(f"{src}: database schema {manifest['schema_version']} is newer than this Estampille")
    files = manifest.get("files", {})
    if DB_NAME not in files:
        raise BackupError(f"{src}: the backup holds no database")
    for rel, expected in files.items():
        path = _inside(src, rel)
        try:
            digest, size = _digest_file(path)
        except OSError as exc:
            raise BackupError(f"{src}: {rel} is unreadable: {exc.strerror}") from exc
        if (digest, size) != (expected["sha256"], expected["size"]):
            raise BackupError(f"{src}: {rel} does not match the manifest")
    return manifest


def _is_inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _summary(path: Path, manifest: dict[str, Any]) -> BackupSummary:
    files = manifest["files"]
    return BackupSummary(
        path=path,
        created_at=manifest["created_at"],
        schema_version=manifest["schema_version"],
        files=len(files),
        size=sum(f["size"] for f in files.values()),
    )


def _prepare_empty(path: Path, *, force: bool, what: str, keep: frozenset[str] = frozenset()) -> None:
    """Make ``path`` an empty directory, but for the files named in ``keep``."""
    if path.exists() and not path.is_dir():
        raise BackupError(f"{what} {path} is not a directory")
    content = [child for child in path.iterdir() if child.name not in keep] if path.is_dir() else []
    if content:
        if not force:
            raise BackupError(f"{what} {path} is not empty (use --force to replace its content)")
        for child in content:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)  # an existing directory keeps its mode otherwise, often 0755: keys and secrets inside


def _inside(root: Path, rel: str) -> Path:
    """``root / rel``, refusing names that climb out of ``root`` (a manifest is input)."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BackupError(f"{root}: manifest names a file outside the backup: {rel!r}")
    return path


def _blob_rel(digest: str) -> str:
    return f"{BLOB_DIR}/{digest[:2]}/{digest}"


def _copy_tree(source: Path, dest: Path) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """Copy every file of the data directory except the live database; check message files."""
    copied: dict[str, tuple[str, int]] = {}
    corrupt: list[str] = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(filenames):
            if name.endswith(TEMP_SUFFIX) or (here == source and name in DB_SIDE_FILES | RUNTIME_FILES):
                continue
            rel = (here / name).relative_to(source).as_posix()
            try:
                digest, size = _copy_file(here / name, dest / rel)
            except FileNotFoundError:
                continue  # removed since the walk listed it (a purge or a temporary file)
            copied[rel] = (digest, size)
            if rel.startswith(BLOB_DIR + "/") and digest != name:
                corrupt.append(rel)
    _fsync_dirs(dest, copied)
    return copied, corrupt


def _copy_listed(src: Path, dest: Path, names: list[str]) -> None:
    for rel in names:
        _copy_file(_inside(src, rel), dest / rel)
    _fsync_dirs(dest, names)


def _fsync_dirs(root: Path, names: Iterable[str]) -> None:
    """Make the new directory entries durable, deepest first."""
    dirs = {root}
    for rel in names:
        dirs.update(root / parent for parent in Path(rel).parents)
    for directory in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        fsync_directory(directory)


def _copy_file(source: Path, target: Path) -> tuple[str, int]:
    """Copy one file durably, returning the SHA-256 and size of what was copied."""
    for directory in reversed([target.parent, *target.parent.parents]):
        if not directory.is_dir():  # one by one: mkdir(parents=True) makes the parents by the umask
            directory.mkdir(exist_ok=True, mode=0o700)
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask, and for a file that existed with another mode
    with open(source, "rb") as src, open(fd, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest(), size


def _digest_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
