"""`estampille serve` in a subprocess: SIGKILL right after the 250 loses nothing; SIGTERM exits 0."""

from __future__ import annotations

import signal

import aiosmtplib

from tests.integration.test_relay import message
from tests.support.served import Relay, write_config
from tests.support.sink import Sink, free_port


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
