"""The baseline: a naive, uncertified store-and-forward relay.

aiosmtpd intake; each message written to a spool file (write, fsync, rename,
directory fsync) before the 250; then forwarded with aiosmtplib, one NEW
connection per recipient, at most CONCURRENCY deliveries at once; the spool
file is removed once every recipient is done. No database, no evidence.
It runs on asyncio's default event loop, or with --uvloop on the loop the relay runs on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from pathlib import Path

import aiosmtplib
import uvloop
from aiosmtpd.smtp import SMTP

from relay.config import UpstreamConfig

# As many upstream sessions at once as the relay's default pool holds (upstream.connections):
# both relays put at most this many transactions in flight to the sink.
CONCURRENCY = UpstreamConfig().connections


def spool_write(directory: Path, data: bytes) -> Path:
    name = secrets.token_hex(8)
    tmp, final = directory / f".{name}.tmp", directory / name
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


class Baseline:
    def __init__(self, spool: Path, sink_port: int) -> None:
        self.spool = spool
        self.sink_port = sink_port
        self.slots = asyncio.Semaphore(CONCURRENCY)
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle_DATA(self, server, session, envelope) -> str:
        path = await asyncio.to_thread(spool_write, self.spool, envelope.original_content)
        task = asyncio.create_task(self.forward(path, envelope.mail_from, list(envelope.rcpt_tos)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return "250 OK"

    async def forward(self, path: Path, sender: str, recipients: list[str]) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        await asyncio.gather(*(self.deliver(sender, rcpt, data) for rcpt in recipients))
        await asyncio.to_thread(path.unlink)

    async def deliver(self, sender: str, recipient: str, data: bytes) -> None:
        async with self.slots:
            await aiosmtplib.send(data, sender=sender, recipients=[recipient], hostname="127.0.0.1",
                                  port=self.sink_port, start_tls=False)


async def main(args: argparse.Namespace) -> None:
    args.spool.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    baseline = Baseline(args.spool, args.sink_port)
    server = await loop.create_server(
        lambda: SMTP(baseline, hostname="baseline.bench", loop=loop), "127.0.0.1", 0
    )
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sink-port", type=int, required=True)
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the relay does")
    arguments = parser.parse_args()
    (uvloop.run if arguments.uvloop else asyncio.run)(main(arguments))
