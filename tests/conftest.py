"""Shared test fixtures. Servers live in tests/support/, one module each."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import uvloop

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def require_tool(name: str) -> str:
    """The path of an outside tool; in CI (CI=true) a missing tool fails the test, never skips it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (run .ci/system-packages)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    """Async tests run on the loop `estampille serve` runs on."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests save screenshots and other artifacts (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
