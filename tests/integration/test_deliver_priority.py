"""While a client is sending mail, deliveries make way: at most
upstream.concurrency_while_receiving of them are in progress, and the full concurrency
comes back once no client is in a transaction."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiosmtplib

from relay.outbound import deliver
from tests.support.relay import relay_config, running
from tests.support.sink import Sink

RECIPIENTS = [f"elu{n}@conseil.example" for n in range(8)]
MESSAGE = b"From: mairie@ville.example\r\nSubject: Convocation\r\n\r\nSeance du conseil.\r\n"


@dataclass
class HeldSink(Sink):
    """A sink that answers no DATA until ``release`` is set, and counts those it holds."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    most_held: int = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        return await super().handle_DATA(server, session, envelope)


async def until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_deliveries_make_way_while_a_client_is_in_a_transaction(tmp_path):
    async with HeldSink() as sink:
        config = relay_config(tmp_path / "data", sink.port,
                              upstream={"concurrency": 8, "connections": 8, "concurrency_while_receiving": 2})
        async with running(config) as service:
            sending = aiosmtplib.SMTP(hostname="127.0.0.1", port=service.smtp_port)
            await sending.connect()
            await sending.mail("mairie@ville.example")  # a transaction stays open: the relay is receiving
            await aiosmtplib.send(MESSAGE, sender="mairie@ville.example", recipients=RECIPIENTS,
                                  hostname="127.0.0.1", port=service.smtp_port)
            await until(lambda: sink.held == 2)
            await asyncio.sleep(0.5)  # long enough for the others to start, were they let
            assert sink.most_held == 2

            await sending.rset()  # the transaction ends: after a short grace, full concurrency
            await until(lambda: sink.held == len(RECIPIENTS))
            sink.release.set()
            await sink.wait_for(len(RECIPIENTS))
            await sending.quit()


async def test_with_no_client_sending_the_full_concurrency_is_used(tmp_path):
    async with HeldSink() as sink:
        config = relay_config(tmp_path / "data", sink.port,
                              upstream={"concurrency": 8, "connections": 8, "concurrency_while_receiving": 2})
        async with running(config) as service:
            await aiosmtplib.send(MESSAGE, sender="mairie@ville.example", recipients=RECIPIENTS,
                                  hostname="127.0.0.1", port=service.smtp_port)
            await until(lambda: sink.held == len(RECIPIENTS))
            sink.release.set()
            await sink.wait_for(len(RECIPIENTS))


async def test_deliveries_in_progress_hold_at_most_their_share_of_octets(tmp_path, monkeypatch):
    """A message to many recipients: its deliveries in progress hold at most OCTETS_IN_PROGRESS
    octets (each copy is in memory until sent); a message larger than that still goes, alone."""
    monkeypatch.setattr(deliver, "OCTETS_IN_PROGRESS", 3 * len(MESSAGE))
    big = MESSAGE + b"Annexe.\r\n" * 100
    async with HeldSink() as sink:
        config = relay_config(tmp_path / "data", sink.port, upstream={"concurrency": 8, "connections": 8})
        async with running(config) as service:
            await aiosmtplib.send(MESSAGE, sender="mairie@ville.example", recipients=RECIPIENTS,
                                  hostname="127.0.0.1", port=service.smtp_port)
            await until(lambda: sink.held == 3)
            await asyncio.sleep(0.5)  # long enough for the others to start, were they let
            assert sink.most_held == 3
            sink.release.set()
            await sink.wait_for(len(RECIPIENTS))

            sink.release.clear()
            sink.most_held = 0
            await aiosmtplib.send(big, sender="mairie@ville.example", recipients=RECIPIENTS[:3],
                                  hostname="127.0.0.1", port=service.smtp_port)
            await until(lambda: sink.held == 1)
            await asyncio.sleep(0.5)
            assert sink.most_held == 1
            sink.release.set()
            await sink.wait_for(len(RECIPIENTS) + 3)
