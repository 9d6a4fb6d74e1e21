"""The tracker as the service runs it: with the relay in one process, and alone
(`estampille serve --tracker-only`) as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from tests.support.relay import relay_config, running

START_SECONDS = 30.0
LISTENING = re.compile(rb"tracker listening on 127\.0\.0\.1:(\d+)")


async def test_serve_starts_the_tracker_with_the_relay(tmp_path: Path) -> None:
    config = relay_config(tmp_path / "data", tracker={"enabled": True, "listen_port": 0})
    async with running(config) as service:
        assert service.smtp_server is not None and service.tracker is not None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{service.tracker.port}/healthz") as response:
                assert response.status == 200 and await response.text() == "ok\n"


async def test_serve_tracker_only_runs_the_tracker_alone_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "estampille.toml"
    config.write_text(
        'data_dir = "data"\n[smtp]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n'
        '[tracker]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n[anchor]\nenabled = false\n',
        encoding="utf-8",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "serve", "--tracker-only", "--config", str(config),
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        seen = b""
        async with asyncio.timeout(START_SECONDS):
            while (match := LISTENING.search(seen)) is None:
                line = await proc.stderr.readline()
                assert line, f"tracker exited before listening: {seen.decode(errors='replace')}"
                seen += line
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{int(match.group(1))}/healthz") as response:
                assert response.status == 200
        assert b"SMTP intake listening" not in seen
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(START_SECONDS):
            rest = await proc.stderr.read()
            assert await proc.wait() == 0, rest.decode(errors="replace")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
