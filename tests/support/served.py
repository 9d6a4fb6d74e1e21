"""`estampille serve` as a real subprocess, for tests that need signals and restarts.

    config = write_config(tmp_path, upstream_port, smtp='tls_cert = "cert.pem"', extra="[log]\\nformat = 'json'\\n")
    relay = await Relay.start(config, env={"NOTIFY_SOCKET": path})
    relay.port.result()          # the SMTP port it bound (listen_port = 0)
    relay.proc.send_signal(signal.SIGTERM); await relay.wait()

The relay's log (stderr) is collected in ``relay.log`` so the pipe never fills.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

START_SECONDS = 30.0
LISTENING = re.compile(rb"SMTP intake listening on 127\.0\.0\.1:(\d+)")


def write_config(tmp_path: Path, upstream_port: int, extra: str = "", smtp: str = "",
                 tracker: str = "enabled = false") -> Path:
    """A relay on 127.0.0.1 port 0 sending to an SMTP upstream without TLS, quick retries;
    ``smtp`` adds lines to the [smtp] table, ``tracker`` is the [tracker] table's body (off by
    default), ``extra`` adds tables at the end."""
    path = tmp_path / "estampille.toml"
    path.write_text(
        f"""
data_dir = "data"
[smtp]
listen_host = "127.0.0.1"
listen_port = 0
hostname = "relay.test"
min_free_disk_mb = 1
{smtp}
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
{tracker}
[anchor]
enabled = false
{extra}""",
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
    async def start(cls, config: Path, env: dict[str, str] | None = None) -> Relay:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "serve", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
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

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
