"""One rate limiter: events per client over a sliding minute, an IPv6 client counted by its /64.

The intake counts failed AUTH attempts with it, the tracker acknowledgment-link misses. An
IPv6 client holds a whole /64 (it would use a fresh address per guess), so the /64 is the
client; the table is bounded so a flood of clients cannot fill memory. Pure: the caller
passes the time.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field

IPV6_CLIENT_PREFIX = 64
MAX_TRACKED_CLIENTS = 100_000


@dataclass
class RateLimiter:
    """Counts events per client (an IPv4 address, an IPv6 /64) over a sliding window."""

    per_minute: int
    window: float = 60.0
    _events: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def blocked(self, address: str, now: float) -> bool:
        """Whether the client of ``address`` has used up its events for the window."""
        recent = self._recent(client_key(address), now)
        return recent is not None and len(recent) >= self.per_minute

    def hit(self, address: str, now: float) -> None:
        """Count one event of the client of ``address``."""
        key = client_key(address)
        recent = self._recent(key, now)
        if recent is None:
            recent = self._events[key] = deque()
        self._events.move_to_end(key)
        recent.append(now)
        while len(self._events) > MAX_TRACKED_CLIENTS:
            self._events.popitem(last=False)  # the client whose last event is oldest

    def reserve(self, address: str, now: float) -> bool:
        """Count an event before the check it limits, so parallel attempts cannot all pass
        :meth:`blocked` first; False, and nothing counted, when the client is over its limit.
        An attempt that should not count gives its slot back with :meth:`release`."""
        if self.blocked(address, now):
            return False
        self.hit(address, now)
        return True

    def release(self, address: str, reserved_at: float) -> None:
        """Forget the event :meth:`reserve` counted at ``reserved_at``."""
        recent = self._events.get(client_key(address))
        if recent is not None and reserved_at in recent:
            recent.remove(reserved_at)

    @property
    def tracked(self) -> int:
        return len(self._events)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        recent = self._events.get(key)
        if recent is None:
            return None
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if not recent:
            del self._events[key]
            return None
        return recent


def client_key(address: str) -> str:
    """What the limiter counts by: the address, or for IPv6 its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(ip)
