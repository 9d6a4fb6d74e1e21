"""A budget of units shared by tasks, served in order (the delivery worker's octets in
progress, the upstream pool's connection slots)."""

from __future__ import annotations

import asyncio
from collections import deque


class Budget:
    """Units shared by tasks: octets of the deliveries in progress (each takes its message's
    size, at most all), or the upstream's connection slots (each takes one).

    First come, first served: once one waits, later ones wait behind it even if they would
    fit, so a large message is not held back for ever by a stream of small ones. ``total``
    may change meanwhile (resize).
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def take(self, units: int) -> int:
        """Wait for ``units`` (at most the total) to be free, take them, and return how many."""
        units = min(units, self.total)
        if not self._waiters and self.used + units <= self.total:
            self.used += units
            return units
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((units, waiter))
        try:
            await waiter  # _grant counted them as used before waking this one
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back(units)  # granted, but cancelled before it could use them
            else:
                self._grant()  # those queued behind it may fit now
            raise
        return units

    def give_back(self, units: int) -> None:
        self.used -= units
        self._grant()

    def resize(self, total: int) -> None:
        self.total = total
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            units, waiter = self._waiters[0]
            if waiter.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self.used + units > self.total:
                return
            self._waiters.popleft()
            self.used += units
            waiter.set_result(None)
