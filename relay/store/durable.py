"""Durable file writes: what survives a crash or a power cut once the call returns.

A file is written under a temporary name, fsync'd, renamed over its final name, and
its directory fsync'd so the new entry itself is on disk (rename alone is not durable).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (new, renamed or deleted files) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably; readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
