"""Stopping: the delivery worker always returns, even when a wake-up races the stop; a slow
component is named in the log while the service waits for it."""

from __future__ import annotations

import asyncio
import logging

from relay import service as service_module
from relay.service import Service
from tests.support.relay import relay_config, running
from tests.support.sink import Sink


async def test_stop_returns_when_a_wakeup_races_it(tmp_path):
    # A new submission wakes the claim loop just as the service stops. On Python 3.11,
    # asyncio.wait_for swallowed that cancel (CPython gh-86296) and stop() hung for ever.
    async with Sink() as sink:
        for attempt in range(20):
            async with running(relay_config(tmp_path / str(attempt), sink.port)) as service:
                deliverer = service.deliverer
                await asyncio.sleep(0.01)  # let the claim loop reach its idle wait
                deliverer.wake()
                await asyncio.sleep(0)  # the wait on the event completes...
                async with asyncio.timeout(10):  # ...and the stop cancels the loop in the same step
                    await deliverer.stop()


async def test_a_component_slow_to_stop_is_named_in_the_log_until_it_stops(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(service_module, "SLOW_STOP_SECONDS", 0.05)
    service = Service(relay_config(tmp_path))
    stopped = []

    async def slow() -> None:
        await asyncio.sleep(0.3)
        stopped.append("slow")

    async def quick() -> None:
        stopped.append("quick")

    service._started("quick", quick)
    service._started("slow", slow)
    with caplog.at_level(logging.WARNING, logger="estampille.service"):
        await service.stop()
    assert stopped == ["slow", "quick"]  # in reverse order of starting, each waited for
    warnings = [r.getMessage() for r in caplog.records if r.name == "estampille.service"]
    assert len(warnings) >= 2 and all(w.startswith("still stopping slow after") for w in warnings)


async def test_a_stop_that_fails_is_logged_and_the_others_still_stop(tmp_path, caplog):
    service = Service(relay_config(tmp_path))
    stopped = []

    async def first() -> None:
        stopped.append("first")

    async def broken() -> None:
        raise OSError("socket already gone")

    service._started("first", first)
    service._started("broken", broken)
    with caplog.at_level(logging.ERROR, logger="estampille.service"):
        await service.stop()
    assert stopped == ["first"]
    assert any(r.getMessage() == "stopping broken failed" for r in caplog.records)
