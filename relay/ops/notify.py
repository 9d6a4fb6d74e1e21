"""systemd's readiness protocol (sd_notify): a datagram of ``KEY=value`` lines
sent to the Unix socket named by ``$NOTIFY_SOCKET``.

The protocol is one ``sendto`` on a plain socket, so it needs no dependency.
Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing. A failure to
notify is logged and never stops the relay: readiness is a courtesy to the
service manager, not a condition for relaying mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

log = logging.getLogger("estampille.notify")
# While a start step that may be long runs (a schema migration), the manager is asked every
# EXTEND_EVERY seconds for EXTEND_BY more: its start timeout (90 s by default) would otherwise
# stop the relay mid-migration, which rolls it back, and each restart would begin it again.
EXTEND_EVERY = 10.0
EXTEND_BY = 30.0


@dataclass(frozen=True)
class Notifier:
    """Where to send notifications; ``address`` is None outside systemd."""

    address: str | bytes | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """The socket named by NOTIFY_SOCKET; '@' starts an abstract socket name."""
        name = environ.get("NOTIFY_SOCKET", "")
        if not name:
            return cls(None)
        if name.startswith("@"):
            return cls(b"\0" + name[1:].encode())
        return cls(name)

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (e.g. ``READY=1``); True if the manager got them."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("cannot notify the service manager: %s", exc.strerror or exc)
            return False
        return True

    @contextlib.asynccontextmanager
    async def extending_start(self, status: str) -> AsyncIterator[None]:
        """Keep extending the manager's start timeout, with ``status``, while the block runs."""
        if self.address is None:
            yield
            return

        async def extend() -> None:
            while True:
                await asyncio.sleep(EXTEND_EVERY)
                self.send(EXTEND_TIMEOUT_USEC=int(EXTEND_BY * 1_000_000), STATUS=status)

        extending = asyncio.create_task(extend())
        try:
            yield
        finally:
            extending.cancel()

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def reloading(self) -> bool:
        return self.send(RELOADING=1, STATUS="reloading")

    def reloaded(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def stopping(self) -> bool:
        return self.send(STOPPING=1, STATUS="stopping: finishing transactions and deliveries in flight")
