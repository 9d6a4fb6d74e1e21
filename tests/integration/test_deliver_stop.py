"""Stopping the delivery worker always returns, even when a wake-up races the stop."""

from __future__ import annotations

import asyncio

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
