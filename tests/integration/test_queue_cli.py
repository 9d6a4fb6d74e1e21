"""`estampille queue` and `estampille queue retry` on a real data directory."""

from __future__ import annotations

import asyncio

import aiosmtplib

from relay.cli import main
from tests.integration.test_relay import message, wait_states
from tests.support.relay import relay_config, running
from tests.support.sink import Sink


def test_queue_lists_failures_and_retry_requeues(tmp_path, capsys):
    config_file = tmp_path / "estampille.toml"

    async def fail_one() -> None:
        async with Sink() as sink:
            sink.script("nobody@example.net", ["550 5.1.1 no such user"])
            config = relay_config(tmp_path / "data", sink.port)
            config_file.write_text(f'data_dir = "{config.data_dir}"\n', encoding="utf-8")
            async with running(config) as service:
                await aiosmtplib.send(message(), sender="a@example.org", recipients=["nobody@example.net"],
                                      hostname="127.0.0.1", port=service.smtp_port)
                await wait_states(service, "failed")

    asyncio.run(fail_one())
    assert main(["queue", "--config", str(config_file)]) == 0
    listing = capsys.readouterr().out
    assert "failed" in listing and "<nobody@example.net>" in listing and "550 5.1.1 no such user" in listing
    delivery_id = listing.split()[0]

    assert main(["queue", "retry", delivery_id, "--config", str(config_file)]) == 0
    assert "1 deliveries queued" in capsys.readouterr().out
    assert main(["queue", "--config", str(config_file)]) == 0
    assert "no deferred or failed deliveries" in capsys.readouterr().out
    assert main(["queue", "retry", "--config", str(config_file)]) == 2
