"""Waiting in tests: poll a condition with a bounded deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
DEADLINE_SECONDS = 30.0  # generous: CI shares two cores with everything else


async def until(
    check: Callable[[], T | Awaitable[T]],
    what: str,
    timeout: float = DEADLINE_SECONDS,
    interval: float = 0.02,
) -> Any:
    """Poll ``check`` (a function or a coroutine function) until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(interval)
