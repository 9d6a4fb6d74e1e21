"""One relay per data directory: an exclusive lock on a file in it, held while the relay runs.

Two relays on one data directory would both claim its deliveries and anchor its
leaves. The lock is an flock(2) on ``relay.lock``: the kernel releases it when the
process ends, however it ends, so a crash never leaves a stale lock behind. The
file holds the pid of the relay that holds it, for the error message.
`estampille serve --tracker-only` does not take it: the tracker may run beside the relay.
`estampille restore` takes it too, so it never replaces the files of a running relay.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from relay.errors import StoreError

LOCK_FILE = "relay.lock"


class DataDirLock:
    """The held lock of one data directory."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, data_dir: Path, *, advice: str = "stop it first, or give this one its own data_dir"
                ) -> DataDirLock:
        """Take the lock, or raise StoreError naming the process that holds it, then ``advice``."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"another relay or restore (pid {holder}) is using data directory {data_dir}; {advice}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(fd)

    async def release(self) -> None:
        """Let the lock go (an async stop step, like the service's other components)."""
        os.close(self._fd)  # closing the descriptor releases the flock
