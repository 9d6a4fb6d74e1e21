"""Fresh random salts for the commitments of fetch and receipt records.

Every page fetch needs a salt. os.urandom is a getrandom() system call that also lets go of
the GIL, which the database thread, committing fetches, may then hold for up to its switch
interval; so salts are cut from one os.urandom read of POOL_SALTS of them. Each salt is
used once and comes from the OS's generator as before; only the reads are fewer.
"""

from __future__ import annotations

import os

SALT_BYTES = 16
POOL_SALTS = 256  # salts per os.urandom read (4 KiB)


class Salts:
    """A source of SALT_BYTES random salts, never the same one twice."""

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        """The next unused salt."""
        start = self._next
        if start >= len(self._pool):
            self._pool, start = os.urandom(SALT_BYTES * POOL_SALTS), 0
        self._next = start + SALT_BYTES
        return self._pool[start:start + SALT_BYTES]
