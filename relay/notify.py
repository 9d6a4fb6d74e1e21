"""systemd's readiness protocol (sd_notify): a datagram of ``KEY=value`` lines
sent to the Unix socket named by ``$NOTIFY_SOCKET``.

The protocol is one ``sendto`` on a plain socket, so it needs no dependency.
Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing. A failure to
notify is logged and never stops the relay: readiness is a courtesy to the
service manager, not a condition for relaying mail.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("estampille.notify")


@dataclass(frozen=True)
class Notifier:
    """Where to send notifications; ``address`` is None outside systemd."""

    address: str | bytes | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "Notifier":
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

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def reloading(self) -> bool:
        return self.send(RELOADING=1, STATUS="reloading")

    def reloaded(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def stopping(self) -> bool:
        return self.send(STOPPING=1, STATUS="stopping: finishing transactions and deliveries in flight")
