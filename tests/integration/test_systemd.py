"""The systemd units: `systemd-analyze verify` is clean and the security
exposure of each service is 2.0 or lower.

`verify` checks that ExecStart names an executable, so the units are rendered
with the `estampille` of the environment running the tests in place of
/opt/estampille/venv/bin/estampille, and nothing else changed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
UNIT = UNITS / "estampille.service"
SERVICES = ("estampille.service", "estampille-backup.service")
INSTALLED_BINARY = "/opt/estampille/venv/bin/estampille"
MAX_EXPOSURE = 2.0


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """Every unit of systemd/, with the test environment's estampille; returns their directory."""
    binary = Path(sys.executable).parent / "estampille"
    if not binary.exists():
        binary = Path(shutil.which("estampille") or "")
    assert binary.is_file(), "the estampille command is not installed in this environment"
    for unit in UNITS.iterdir():
        text = unit.read_text()
        if unit.suffix == ".service":
            assert INSTALLED_BINARY in text, unit.name
        (tmp_path / unit.name).write_text(text.replace(INSTALLED_BINARY, str(binary)))
    return tmp_path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("systemd-analyze")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_verify_is_clean(rendered: Path):
    units = sorted(str(p) for p in rendered.iterdir())
    assert len(units) == 3  # the relay, the backup service and its timer
    result = analyze("verify", *units)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_security_exposure_is_at_most_two(rendered: Path, service: str):
    result = analyze("security", "--offline=yes", "--no-pager", str(rendered / service))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_keeps_the_reviewed_hardening():
    """The settings the issue names stay in the unit (a later edit cannot drop them silently)."""
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            settings.setdefault(name, []).append(value)
    for name, value in {
        "Type": "notify",
        "User": "estampille",
        "StateDirectory": "estampille",
        "ConfigurationDirectory": "estampille",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
    }.items():
        assert settings.get(name) == [value], name
    assert "@system-service" in settings["SystemCallFilter"]
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
