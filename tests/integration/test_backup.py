"""Backup and restore: every record and message file survives the round trip,
a backup is taken while the store is being written, restore refuses to
overwrite data unless told to, and never while a relay runs on the data
directory, and a proof bundle made from a restored copy
verifies offline."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli import main
from relay.errors import BackupError
from relay.evidence.records import iso_time, sha256_hex, submission_record
from relay.ops.backup import MANIFEST, backup, backup_data_dir, check, restore
from relay.ops.datalock import LOCK_FILE, DataDirLock
from relay.store import DB_NAME, Store
from tests.support.proved import ACKNOWLEDGER, MESSAGE_ID, RECIPIENTS, proved_message

NOW = 1_790_000_000.0


async def add_message(store: Store, n: int) -> tuple[str, str]:
    """One message file and its submission record, as intake leaves them, and its sent copy,
    which the database holds (a small copy, as deliver leaves it)."""
    data = f"Subject: convocation {n}\r\n\r\nConseil municipal, séance {n}.\r\n".encode()
    data_sha = await store.put_blob(data)
    record = submission_record(
        data_sha256=data_sha,
        mail_from="mairie@example.org",
        rcpt_to=[f"elu{n}@example.org"],
        client_address="127.0.0.1",
        auth_user=None,
        tls=None,
        received_at=iso_time(NOW + n),
        message_id=f"<{n}@example.org>",
        attachments=[],
    )
    async with store.transaction() as db:
        await Store.insert_record(db, record, submission_id=f"s{n}", now=NOW + n)
        await Store.insert_submission(
            db,
            {"id": f"s{n}", "received_at": NOW + n, "mail_from": "mairie@example.org", "client_address": "127.0.0.1",
             "size": len(data), "data_sha256": data_sha, "record_digest": record.digest},
            [(f"elu{n}@example.org", "[]")],
        )
    (delivery,) = await store.delivery_states(f"s{n}")
    copy = b"DKIM-Signature: v=1\r\n" + data
    async with store.transaction() as db:
        await Store.insert_bytes(db, sha256_hex(copy), copy)
        await Store.set_delivery_copy(db, delivery.id, sha256_hex(copy), record.digest, NOW + n)
    return data_sha, record.digest


async def contents(data_dir: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    store = await Store.open(data_dir)
    try:
        rows = await store.fetchall("SELECT digest FROM records")
        records = {row[0]: (await store.get_record(row[0])).body for row in rows}
        files = {p.name: p.read_bytes() for p in store.blob_dir.rglob("*") if p.is_file()}
        copies = await store.fetchall("SELECT sha256 FROM message_bytes")
        files.update(await store.inline_bytes([row[0] for row in copies]))
    finally:
        await store.close()
    return records, files


async def test_round_trip_keeps_every_record_and_message(tmp_path: Path):
    live = tmp_path / "live"
    store = await Store.open(live)
    try:
        made = [await add_message(store, n) for n in range(20)]
    finally:
        await store.close()

    summary = await backup_data_dir(live, tmp_path / "backup", now=NOW)
    assert summary.files == 21  # the database (with the 20 copies) and 20 message files
    restored = tmp_path / "restored"
    await restore(tmp_path / "backup", restored, force=False)

    records, files = await contents(restored)
    assert len(files) == 40  # each message and its copy
    assert (records, files) == await contents(live)
    assert {sha for sha, _ in made} <= set(files)
    assert {digest for _, digest in made} <= set(records)
    assert all(sha256_hex(body) == name for name, body in files.items())


async def test_backup_while_writing_is_consistent(tmp_path: Path):
    """A writer keeps committing messages while `estampille backup` (another connection)
    copies: the copy is one consistent snapshot with every message file it names."""
    store = await Store.open(tmp_path / "live")
    try:
        await asyncio.gather(*(add_message(store, n) for n in range(5)))
        done = asyncio.Event()

        async def keep_writing() -> int:
            n = 5
            while not done.is_set():
                await add_message(store, n)
                n += 1
            return n

        writer = asyncio.create_task(keep_writing())
        await backup_data_dir(tmp_path / "live", tmp_path / "backup", now=NOW)
        done.set()
        written = await writer
    finally:
        await store.close()
    assert written > 5  # the writer did commit while the backup ran

    await restore(tmp_path / "backup", tmp_path / "restored", force=False)
    restored = await Store.open(tmp_path / "restored")
    try:
        assert await restored.integrity_check() == []
        rows = await restored.fetchall("SELECT body FROM records")
        assert len(rows) >= 5
        for row in rows:  # every message a snapshot record names was copied
            data_sha = json.loads(row[0])["data_sha256"]
            assert sha256_hex(await restored.get_blob(data_sha)) == data_sha
    finally:
        await restored.close()


async def backed_up_then_written(live: Path, backup_dir: Path) -> None:
    """A data directory with two messages, backed up after the first one."""
    store = await Store.open(live)
    try:
        await add_message(store, 1)
        await backup(store, backup_dir, now=NOW)
        await add_message(store, 2)
    finally:
        await store.close()


async def test_restore_refuses_a_non_empty_data_dir_without_force(tmp_path: Path):
    await backed_up_then_written(tmp_path / "live", tmp_path / "backup")
    with pytest.raises(BackupError, match="not empty"):
        await restore(tmp_path / "backup", tmp_path / "live", force=False)
    await restore(tmp_path / "backup", tmp_path / "live", force=True)
    records, _ = await contents(tmp_path / "live")
    assert len(records) == 1


async def test_restore_leaves_the_data_dir_of_a_running_relay_alone(tmp_path: Path):
    live = tmp_path / "live"
    relay_lock = DataDirLock.acquire(live)  # what `estampille serve` holds while it runs
    try:
        await backed_up_then_written(live, tmp_path / "backup")
        manifest = json.loads((tmp_path / "backup" / MANIFEST).read_text())
        assert LOCK_FILE not in manifest["files"]  # the relay's lock is not data
        with pytest.raises(BackupError, match=r"another relay or restore \(pid \d+\) is using data directory"
                                              r" .*live; stop it before restoring"):
            await restore(tmp_path / "backup", live, force=True)
        records, _ = await contents(live)
        assert len(records) == 2  # nothing was deleted
    finally:
        await relay_lock.release()
    await restore(tmp_path / "backup", live, force=True)
    records, _ = await contents(live)
    assert len(records) == 1
    await DataDirLock.acquire(live).release()  # the restore let the lock go: a relay may start


async def test_a_damaged_backup_is_refused(tmp_path: Path):
    store = await Store.open(tmp_path / "live")
    try:
        data_sha, _ = await add_message(store, 1)
        await backup(store, tmp_path / "backup", now=NOW)
    finally:
        await store.close()
    (tmp_path / "backup" / "messages" / data_sha[:2] / data_sha).write_bytes(b"tampered")
    with pytest.raises(BackupError, match="does not match the manifest"):
        check(tmp_path / "backup")
    with pytest.raises(BackupError):
        await restore(tmp_path / "backup", tmp_path / "restored", force=False)
    assert not (tmp_path / "restored").exists()


def test_cli_backup_and_restore(tmp_path: Path, capsys):
    async def populate() -> None:
        store = await Store.open(tmp_path / "live")
        try:
            await add_message(store, 1)
        finally:
            await store.close()

    asyncio.run(populate())
    live = tmp_path / "live.toml"
    live.write_text('data_dir = "live"\n')
    other = tmp_path / "other.toml"
    other.write_text('data_dir = "other"\n')
    assert main(["backup", "--config", str(live), str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / MANIFEST).is_file()
    assert main(["backup", "--config", str(live), str(tmp_path / "b")]) == 4  # not empty
    assert main(["restore", "--config", str(other), str(tmp_path / "b")]) == 0
    assert main(["restore", "--config", str(other), str(tmp_path / "b")]) == 4
    assert "--force" in capsys.readouterr().err
    assert main(["restore", "--config", str(other), "--force", str(tmp_path / "b")]) == 0


async def test_a_bundle_made_from_the_restored_copy_verifies(tmp_path: Path):
    """Backup while the relay runs, lose the data directory, restore, prove, verify offline."""
    async with proved_message(tmp_path) as p:
        await p.anchor()
        await p.confirm()
        await backup_data_dir(p.data_dir, tmp_path / "backup", now=NOW)  # a second connection, as the CLI
        await p.service.stop()
        shutil.rmtree(p.data_dir)

        config = tmp_path / "restored.toml"
        config.write_text('data_dir = "restored"\n')
        assert await asyncio.to_thread(main, ["restore", "--config", str(config), str(tmp_path / "backup")]) == 0
        bundle = tmp_path / "bundle.zip"
        assert await asyncio.to_thread(
            main, ["proof", "--config", str(config), "-o", str(bundle), MESSAGE_ID]
        ) == 0
        esplora = [arg for url in p.explorers for arg in ("--esplora", url)]
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "relay.cli", "verify", str(bundle), *esplora, "--regtest", "--json"],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "verified"
    assert {r["recipient"]: r["acknowledged_at"] is not None for r in report["recipients"]} == {
        r: r == ACKNOWLEDGER for r in RECIPIENTS}


async def test_a_damaged_message_file_is_reported_by_the_backup(tmp_path: Path):
    store = await Store.open(tmp_path / "live")
    try:
        data_sha, _ = await add_message(store, 1)
        store.blob_path(data_sha).write_bytes(b"bit rot")
        with pytest.raises(BackupError, match=f"messages/{data_sha[:2]}/{data_sha} does not match its name"):
            await backup(store, tmp_path / "backup", now=NOW)
    finally:
        await store.close()
    assert (tmp_path / "backup" / MANIFEST).is_file()  # written anyway: the rest is worth having


async def test_a_backup_into_an_existing_folder_is_private_whatever_the_umask(tmp_path: Path):
    """Before: with umask 022, keys, secret and database came out world-readable."""
    live = tmp_path / "live"
    store = await Store.open(live)
    try:
        await add_message(store, 1)
    finally:
        await store.close()
    (live / "dkim").mkdir()
    (live / "dkim" / "key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    (live / "dkim" / "key.pem").chmod(0o600)
    dest = tmp_path / "backups"
    dest.mkdir(mode=0o755)  # an empty folder made beforehand, as an operator would
    dest.chmod(0o755)
    saved = os.umask(0o022)
    try:
        await backup_data_dir(live, dest, now=NOW)
        await restore(dest, tmp_path / "restored", force=False)
    finally:
        os.umask(saved)
    for root in (dest, tmp_path / "restored"):
        modes = {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}
        assert {name for name, mode in modes.items() if mode & 0o077} == set(), modes
        assert modes["dkim/key.pem"] == 0o600 and modes[DB_NAME] == 0o600
