"""The import direction of docs/architecture.md: each package imports only from layers below
its own (never from its own layer's neighbours, never upward), so there is no cycle between
packages and nothing below the top imports ``tracker``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lowest first; a unit is a package of relay/, a top-level module of relay/, or tracker.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("relay.errors",),
    ("relay.config", "relay.backoff", "relay.ratelimit", "relay.batching", "relay.french"),
    ("relay.logs",),
    ("relay.certify",),  # the pure cores: the copy
    ("relay.evidence",),  # and the proof (it reads a message's facts with certify)
    ("relay.law",),  # pure too: deadlines, meeting dates, the register (its records are evidence)
    ("relay.store",),
    ("relay.smtp", "relay.anchor", "relay.ops"),
    ("relay.outbound", "relay.proof", "relay.preflight"),
    ("tracker",),
    ("relay.service",),
    ("relay.cli",),
)
LAYER_OF = {unit: n for n, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "tracker":
        return "tracker"
    if parts[0] != "relay" or len(parts) == 1:
        return None
    return f"relay.{parts[1]}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from relay import x` names the unit relay.x
            found.update(f"{node.module}.{alias.name}" if node.module == "relay" else node.module
                         for alias in node.names)
    return found


def wrong_way(module: str, targets: set[str]) -> list[str]:
    """The imports of ``module`` that do not go to a layer below its own."""
    importer = unit_of(module)
    if importer is None:  # relay/__init__.py
        return []
    assert importer in LAYER_OF, f"{module}: add its package to LAYERS (and to docs/architecture.md)"
    return [f"{module} imports {target}" for target in sorted(targets)
            if (imported := unit_of(target)) not in (None, importer) and LAYER_OF[imported] >= LAYER_OF[importer]]


def test_packages_import_only_from_layers_below() -> None:
    paths = sorted([*(ROOT / "relay").rglob("*.py"), *(ROOT / "tracker").rglob("*.py")])
    assert [line for path in paths for line in wrong_way(module_name(path), imports(path))] == []


def test_the_architecture_document_names_every_layer() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for unit in LAYER_OF:
        name = unit.removeprefix("relay.")
        assert f"`{name}`" in text or f"`{name}/`" in text, unit


def test_upward_sideways_and_tracker_imports_are_caught(tmp_path: Path) -> None:
    """The check itself, on a file that imports upward, sideways, tracker, and what it may."""
    probe = tmp_path / "probe.py"
    probe.write_text("from relay.anchor.worker import Anchorer\nimport relay.certify.dkim\nimport tracker.app\n"
                     "from relay import evidence\nfrom relay.store.held import hold_poison\nimport aiosqlite\n")
    assert wrong_way("relay.store.probe", imports(probe)) == [
        "relay.store.probe imports relay.anchor.worker", "relay.store.probe imports tracker.app"]
    assert wrong_way("relay.evidence.probe", imports(probe)) == [
        "relay.evidence.probe imports relay.anchor.worker",
        "relay.evidence.probe imports relay.store.held", "relay.evidence.probe imports tracker.app"]
