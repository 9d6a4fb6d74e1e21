"""Per-address limit on acknowledgment-link misses (unknown, malformed or expired tokens).

Guessing a 128-bit token is hopeless, but a bounded miss rate keeps the attempt
cheap to refuse and visible. Fixed one-minute windows; the table is bounded so
a flood of addresses cannot exhaust memory. Pure: the caller passes the time.
"""

from __future__ import annotations

from collections import OrderedDict

from relay.smtp.auth import client_key

WINDOW_SECONDS = 60.0
MAX_TRACKED_ADDRESSES = 100_000


class MissLimiter:
    """Counts misses per client address within the current one-minute window."""

    def __init__(self, limit_per_minute: int) -> None:
        self.limit = limit_per_minute
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def _count(self, address: str, now: float) -> int:
        start, count = self._windows.get(address, (now, 0))
        return count if now - start < WINDOW_SECONDS else 0

    def blocked(self, address: str, now: float) -> bool:
        """Whether ``address`` (for IPv6, its /64: one client holds a whole /64) has used up its misses."""
        return self._count(client_key(address), now) >= self.limit

    def miss(self, address: str, now: float) -> None:
        """Count one miss from ``address``."""
        address = client_key(address)
        start, count = self._windows.pop(address, (now, 0))
        if now - start >= WINDOW_SECONDS:
            start, count = now, 0
        self._windows[address] = (start, count + 1)
        while len(self._windows) > MAX_TRACKED_ADDRESSES:
            self._windows.popitem(last=False)  # the address that missed longest ago
