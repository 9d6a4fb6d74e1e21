"""What docs/verifying.md and each bundle's VERIFY.md tell a third party works as written:
the OpenDKIM check of the copies runs offline against the bundle's keys, and the
Message-ID in VERIFY.md reads as it is."""

from __future__ import annotations

import asyncio
import subprocess
import zipfile
from pathlib import Path

import pytest

from relay import cli
from relay.evidence.bundle import render_verify_doc
from tests.conftest import require_tool
from tests.support.proved import MESSAGE_ID, RECIPIENTS, proved_message
from tests.unit.test_guide import blocks

ROOT = Path(__file__).resolve().parents[2]


def test_verify_doc_shows_the_message_id_as_it_is():
    """Before: `&lt;convocation&amp;2026@mairie.example&gt;` in a Markdown file."""
    text = render_verify_doc("<convocation&2026@mairie.example>")
    assert "`<convocation&2026@mairie.example>`" in text and "&lt;" not in text and "&amp;" not in text


@pytest.mark.external
async def test_the_documented_opendkim_check_passes_offline(tmp_path):
    require_tool("/usr/sbin/opendkim")
    bash = require_tool("bash")
    (script,) = [b for b in blocks(ROOT / "docs" / "verifying.md", "sh") if "TestPublicKeys" in b]
    async with proved_message(tmp_path) as p:
        config = tmp_path / "estampille.toml"
        config.write_text(f'data_dir = "{p.data_dir}"\n', encoding="utf-8")
        code = await asyncio.to_thread(cli.main, ["--config", str(config), "proof", MESSAGE_ID, "-o",
                                                  str(tmp_path / "bundle.zip")])
        assert code == 0
    unpacked = tmp_path / "bundle"
    with zipfile.ZipFile(tmp_path / "bundle.zip") as zf:
        zf.extractall(unpacked)
    # The check runs with no network at all: keys come from keys/, never from DNS.
    result = await asyncio.to_thread(subprocess.run, ["unshare", "-rn", bash, "-e", "-c", script], cwd=unpacked,
                                     capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    verdicts = [line for line in result.stdout.splitlines() if line.startswith("dkim=")]
    assert len(verdicts) == 2 * len(RECIPIENTS), result.stdout
    assert all(v.startswith("dkim=pass") for v in verdicts), result.stdout
