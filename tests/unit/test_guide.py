"""The administrator's guide (docs/) cannot drift from the code: its configuration
passes `estampille check-config`, the unit it shows is the shipped one, and every
command, configuration key, metric, unit file and link it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from relay.cli import build_parser, main
from relay.config import Config, documented_keys
from relay.ops.metrics import Metrics
from relay.store import OperationsFigures

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [*DOCS, ROOT / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"\bestampille ([a-z][a-z-]+)")
DOTTED_KEY = re.compile(r"^([a-z_]+)\.([a-z_0-9]+)$")
METRIC = re.compile(r"\bestampille_[a-z_]+\b")
LINK = re.compile(r"\]\(([^)#\s]+)")
UNIT_FILE = re.compile(r"\bsystemd/([\w.-]+\.(?:service|timer))")


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text(encoding="utf-8")) if lang == language]


def code(page: Path) -> str:
    """Everything a reader would type or copy: fenced blocks and inline code."""
    text = page.read_text(encoding="utf-8")
    return "\n".join([body for _, body in FENCE.findall(text)] + INLINE.findall(FENCE.sub("", text)))


def test_the_guide_has_its_pages():
    names = {p.name for p in DOCS}
    assert {"install.md", "dns.md", "sending-application.md", "tls.md", "admin.md", "operations.md",
            "verifying.md", "legal.md", "privacy.md"} <= names
    assert "docs/" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_production_configuration_loads_and_names_its_files(tmp_path, capsys):
    """Its files come in later steps: until then check-config names each (the walkthrough test passes it)."""
    (config,) = blocks(ROOT / "docs" / "install.md", "toml")
    path = tmp_path / "estampille.toml"
    path.write_text(config, encoding="utf-8")
    assert main(["check-config", "--config", str(path)]) == 3
    err = capsys.readouterr().err
    assert all(name in err for name in ("fullchain.pem", "credentials", "commune.example.estampille1.rsa.pem")), err
    loaded = Config.from_file(path)
    assert loaded.data_dir == "/var/lib/estampille" and loaded.upstream.kind == "smtp"


def test_the_unit_shown_is_the_unit_shipped():
    (unit,) = blocks(ROOT / "docs" / "install.md", "ini")
    assert unit == (ROOT / "systemd" / "estampille.service").read_text(encoding="utf-8")


def commands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(sub.choices)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_command_named_exists(page):
    named = set(COMMAND.findall(code(page)))
    assert named - commands() == set(), f"{page.name} names commands that do not exist"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_configuration_key_named_exists(page):
    keys = {name for name, _ in documented_keys()}
    sections = {name.split(".")[0] for name in keys}
    named = {m.group(0) for span in INLINE.findall(page.read_text(encoding="utf-8"))
             if (m := DOTTED_KEY.match(span.split(" = ")[0])) and m.group(1) in sections}
    assert named - keys == set(), f"{page.name} names configuration keys that do not exist"


def test_every_metric_named_is_exposed():
    metrics = Metrics()
    metrics.store_figures.update(OperationsFigures(
        deliveries_by_state={}, attempts_by_outcome={}, fetches_by_classification={},
        oldest_deferred_received_at=None, leaves_pending=0, oldest_leaf_queued_at=None,
        batches_pending=0, oldest_batch_created_at=None, receipts=0,
    ), 0.0)
    metrics.smtp_reply("451 4.3.0 x")
    metrics.http_errors.labels("404").inc()
    exposed = set(METRIC.findall(generate_latest(metrics.registry).decode()))
    named = {m for page in PAGES for m in METRIC.findall(page.read_text(encoding="utf-8"))}
    assert named and named - exposed == set()


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_link_and_unit_file_exists(page):
    text = page.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if not target.startswith(("http://", "https://", "mailto:")):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
    for unit in UNIT_FILE.findall(text):
        assert (ROOT / "systemd" / unit).is_file(), f"{page.name} names missing systemd/{unit}"
