"""One relay per data directory (relay/ops/datalock.py); the tracker alone may run beside it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path

import pytest

from relay.errors import StoreError
from relay.service import Service
from tests.support.relay import relay_config


async def test_a_second_relay_on_the_same_data_directory_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    config = relay_config(tmp_path / "data")
    first = Service(config)
    await first.start()
    try:
        second = Service(config)
        with pytest.raises(StoreError, match=rf"another relay or restore \(pid {os.getpid()}\) is using data directory"):
            await second.start()
        assert second.smtp_server is None and second.store is None  # it took nothing
        tracker = Service(dataclasses.replace(config, tracker=dataclasses.replace(config.tracker, listen_port=0)),
                          tracker_only=True)
        await tracker.start()  # the tracker alone beside the relay is a supported split
        await tracker.stop()
    finally:
        await first.stop()
    again = Service(config)
    await again.start()
    await again.stop()


async def test_serve_beside_a_running_relay_exits_with_one_line_naming_it(tmp_path: Path) -> None:
    relay = Service(relay_config(tmp_path / "data"))
    await relay.start()
    try:
        config = tmp_path / "estampille.toml"
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\n[smtp]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n'
            '[tracker]\nenabled = false\n[anchor]\nenabled = false\n',
            encoding="utf-8",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "serve", "--config", str(config),
            stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 4, err.decode(errors="replace")
        assert f"estampille: another relay or restore (pid {os.getpid()}) is using data directory".encode() in err
        assert b"Traceback" not in err
    finally:
        await relay.stop()
