"""Retry waits: one exponential backoff with jitter for every retry of the relay.

Deliveries, webhook events, calendar submissions and the recording of a delivery's outcome
wait ``first * 2 ** (attempts - 1)`` seconds, capped at ``maximum``, less up to
:data:`JITTER` of it drawn at random: retries that one outage made due together (an upstream
or a calendar restarting) spread out instead of arriving at once. The jitter only shortens a
wait, so ``first`` and ``maximum`` stay the bounds an operator configured.

Pure: the caller passes the random draw (``random.random()``; a test passes a constant).
"""

from __future__ import annotations

from dataclasses import dataclass

JITTER = 0.2


@dataclass(frozen=True)
class Backoff:
    first: float
    maximum: float
    jitter: float = JITTER

    def delay(self, attempts: int, draw: float) -> float:
        """The wait after the ``attempts``-th failed attempt (1-based), ``draw`` in [0, 1)."""
        return min(self.maximum, self.first * 2.0 ** max(0, attempts - 1)) * (1 - self.jitter * draw)
