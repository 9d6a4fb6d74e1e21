"""Start the real relay (relay.service.Service) in a test, on the test's loop.

    config = relay_config(tmp_path, upstream_port=sink.port, smtp={"max_message_size": 10_000})
    async with running(config) as service:
        service.smtp_port ...

``relay_config`` listens on 127.0.0.1 port 0, sends to an SMTP upstream on
127.0.0.1 without TLS, retries after 0.2 s (doubling to 1 s), polls the queue
every 0.05 s and disables the tracker and anchoring; any section can be
overridden with a dict of keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from relay.config import Config
from relay.service import Service


def relay_config(data_dir: Path, upstream_port: int = 25, **sections: dict[str, Any]) -> Config:
    base: dict[str, dict[str, Any]] = {
        "smtp": {"listen_host": "127.0.0.1", "listen_port": 0, "hostname": "relay.test", "min_free_disk_mb": 1},
        "upstream": {"kind": "smtp", "host": "127.0.0.1", "port": upstream_port, "tls": "none", "timeout": 10.0},
        "delivery": {"retry_first": 0.2, "retry_max": 1.0, "poll_interval": 0.05},
        "tracker": {"enabled": False},
        "anchor": {"enabled": False},
    }
    for name, keys in sections.items():
        base.setdefault(name, {}).update(keys)
    config = Config(data_dir=str(data_dir))
    for name, keys in base.items():
        section = getattr(config, name)
        config = dataclasses.replace(config, **{name: dataclasses.replace(section, **keys)})
    return config


@contextlib.asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[Service]:
    service = Service(config, **kwargs)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
