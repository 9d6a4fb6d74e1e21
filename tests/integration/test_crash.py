"""`estampille serve` in a subprocess: SIGKILL right after the 250 loses nothing; SIGTERM exits 0."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiosmtplib

from tests.integration.test_relay import message
from tests.support.sink import Sink, free_port

START_SECONDS = 30.0
LISTENING = re.compile(rb"SMTP intake listening on 127\.0\.0\.1:(\d+)")


def write_config(tmp_path: Path, upstream_port: int) -> Path:
    path = tmp_path / "estampille.toml"
    path.write_text(
        f"""
data_dir = "data"
[smtp]
listen_host = "127.0.0.1"
listen_port = 0
hostname = "relay.test"
min_free_disk_mb = 1
[upstream]
kind = "smtp"
host = "127.0.0.1"
port = {upstream_port}
tls = "none"
timeout = 5.0
[delivery]
retry_first = 0.2
retry_max = 0.5
poll_interval = 0.05
[tracker]
enabled = false
[anchor]
enabled = false
""",
        encoding="utf-8",
    )
    return path


class Relay:
    """One `estampille serve` process; its log is collected so the pipe never fills."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log = b""
        self.port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, config: Path) -> "Relay":
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "serve", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        relay = cls(proc)
        await asyncio.wait_for(asyncio.shield(relay.port), START_SECONDS)
        return relay

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log += line
            found = LISTENING.search(line)
            if found and not self.port.done():
                self.port.set_result(int(found.group(1)))
        if not self.port.done():
            self.port.set_exception(RuntimeError(self.log.decode(errors="replace")))

    async def wait(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), START_SECONDS)
        await self._reader
        return code


async def test_sigkill_after_250_then_restart_delivers(tmp_path):
    upstream_port = free_port()  # nobody listens yet: the copy cannot leave before the kill
    config = write_config(tmp_path, upstream_port)
    relay = await Relay.start(config)
    try:
        _, text = await aiosmtplib.send(message(subject="Avant le crash"), sender="a@example.org",
                                        recipients=["b@example.net"], hostname="127.0.0.1", port=relay.port.result())
        assert text.startswith("2.0.0 Ok: queued as")
        relay.proc.send_signal(signal.SIGKILL)
    finally:
        if relay.proc.returncode is None:
            relay.proc.kill()
    assert await relay.wait() == -signal.SIGKILL

    async with Sink(port=upstream_port) as sink:
        relay = await Relay.start(config)
        try:
            got = await sink.wait_for(1)
        finally:
            relay.proc.send_signal(signal.SIGTERM)
            code = await relay.wait()
    assert got[0].rcpt_tos == ("b@example.net",) and b"Subject: Avant le crash" in got[0].data
    assert code == 0, relay.log.decode(errors="replace")
    assert b"stopped" in relay.log
