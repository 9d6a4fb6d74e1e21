"""Poison messages: `estampille serve` killed three times in a row with a delivery in flight
holds it (logged, counted, listed); `estampille queue release ID` sends it again."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib

from relay.store import DB_NAME
from relay.store.held import CRASHES_TO_HOLD, HELD_UNTIL
from tests.integration.test_relay import message
from tests.integration.test_signals import notification, notify_socket
from tests.support.polling import until
from tests.support.served import Relay, write_config
from tests.support.sink import Sink, free_port

WAIT_SECONDS = 60.0


class BlackHole:
    """An upstream that accepts connections and never says a word: a delivery stays in flight."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> BlackHole:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", self.port)
        return self

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.connected.set()
        await reader.read()

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def serving(config: Path) -> AsyncIterator[Relay]:
    """The relay, once it told systemd's stand-in it is ready; stopped with SIGTERM, exiting 0."""
    with notify_socket() as (path, sock):
        relay = await Relay.start(config, env={"NOTIFY_SOCKET": path})
        try:
            assert (await notification(sock))[0] == "READY=1"
            yield relay
        finally:
            relay.proc.send_signal(signal.SIGTERM)
            assert await relay.wait() == 0, relay.log.decode(errors="replace")


def delivery_row(config: Path) -> tuple[int, str, float]:
    with sqlite3.connect(config.parent / "data" / DB_NAME) as db:
        return db.execute("SELECT id, state, next_attempt_at FROM deliveries").fetchone()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=WAIT_SECONDS, check=False)


async def killed_in_flight(config: Path, upstream: BlackHole, *, send: bool = False) -> None:
    """Start the relay, wait until it is sending the delivery, SIGKILL it."""
    upstream.connected.clear()
    relay = await Relay.start(config)
    try:
        if send:
            await aiosmtplib.send(message(subject="Poison"), sender="a@example.org", recipients=["b@example.net"],
                                  hostname="127.0.0.1", port=relay.port.result())
        await asyncio.wait_for(upstream.connected.wait(), WAIT_SECONDS)
        assert delivery_row(config)[1] == "sending"
        relay.proc.send_signal(signal.SIGKILL)
    finally:
        relay.kill()
    assert await relay.wait() == -signal.SIGKILL


async def test_three_crashes_in_a_row_hold_a_delivery_until_released(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    async with BlackHole(port) as upstream:
        for crash in range(CRASHES_TO_HOLD):
            await killed_in_flight(config, upstream, send=crash == 0)
            assert delivery_row(config)[1] == "sending"
        upstream.connected.clear()
        async with serving(config) as relay:
            delivery_id, state, next_at = delivery_row(config)
            assert (state, next_at) == ("deferred", HELD_UNTIL)
            assert f"delivery {delivery_id} of ".encode() in relay.log and b"held" in relay.log
        assert not upstream.connected.is_set()  # held: not tried again

    listed = cli(config, "queue")
    assert f"{delivery_id:>6} held" in listed.stdout, listed
    released = cli(config, "queue", "release", str(delivery_id))
    assert released.returncode == 0 and "1 held deliveries released" in released.stdout, released
    assert cli(config, "queue", "release", str(delivery_id)).returncode != 0  # no longer held

    async with Sink(port=port) as sink, serving(config):
        got = await sink.wait_for(1)
    assert b"Subject: Poison" in got[0].data
    assert delivery_row(config)[1] == "delivered"


async def test_a_crash_without_the_delivery_in_flight_restarts_the_count(tmp_path: Path) -> None:
    """Two crashes with it in flight, one start that finishes its attempt (deferred), two more
    crashes: never three in a row, so it is not held."""
    port = free_port()
    config = write_config(tmp_path, port)
    async with BlackHole(port) as upstream:
        for crash in range(CRASHES_TO_HOLD - 1):
            await killed_in_flight(config, upstream, send=crash == 0)
    async with Sink(port=port) as sink, serving(config):
        sink.script("b@example.net", ["451 4.3.0 try later"] * 100)
        await until(lambda: sink.attempts, "an attempt that ends (deferred)")
    async with BlackHole(port) as upstream:
        for _ in range(CRASHES_TO_HOLD - 1):
            await killed_in_flight(config, upstream)
    async with BlackHole(port) as upstream:
        relay = await Relay.start(config)
        try:
            await asyncio.wait_for(upstream.connected.wait(), WAIT_SECONDS)  # tried again: not held
        finally:
            relay.kill()
            await relay.wait()
    assert b" held" not in relay.log
