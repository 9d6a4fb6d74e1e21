"""The relay (relay.service.Service) on an event loop of its own, in a thread.

For tests that drive it with blocking clients (raw sockets, smtplib, schemathesis's
requests), possibly from Hypothesis examples, while it keeps running::

    with ThreadedRelay(relay_config(tmp, upstream={"kind": "maildir"})) as relay:
        relay.port, relay.tracker_port, relay.call(relay.service.store.fetchall("SELECT ..."))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from relay.config import Config
from relay.service import Service

START_SECONDS = 30.0
STOP_SECONDS = 60.0


class ThreadedRelay:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.service = Service(config)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="threaded-relay")

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = START_SECONDS) -> Any:
        """Run ``coroutine`` on the relay's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def __enter__(self) -> ThreadedRelay:
        self.thread.start()
        self.call(self.service.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.service.stop(), STOP_SECONDS)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def port(self) -> int:
        return self.service.smtp_port

    @property
    def tracker_port(self) -> int:
        assert self.service.tracker is not None
        return self.service.tracker.port
