"""The `estampille` command as a new administrator meets it: which configuration each
command reads without --config, what it says when it reads none, and the small
things of a command line (--version, --config before the command, a closed pipe)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay import cli
from relay.cli import main


@pytest.fixture
def system_config(tmp_path, monkeypatch) -> Path:
    """Where the guide puts the configuration, moved under tmp_path; no $ESTAMPILLE_CONFIG."""
    path = tmp_path / "etc" / "estampille.toml"
    monkeypatch.setattr(cli, "SYSTEM_CONFIG", path)
    monkeypatch.delenv("ESTAMPILLE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return path


def write_config(path: Path, data_dir: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'data_dir = "{data_dir}"\n', encoding="utf-8")
    return path


def test_every_command_reads_the_system_configuration_without_config(system_config, tmp_path, capsys):
    write_config(system_config, tmp_path / "var")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert f"configuration OK: {system_config}" in out and f"data directory: {tmp_path / 'var'}" in out


def test_estampille_config_comes_before_the_system_file(system_config, tmp_path, monkeypatch, capsys):
    write_config(system_config, tmp_path / "var")
    monkeypatch.setenv("ESTAMPILLE_CONFIG", str(write_config(tmp_path / "other.toml", tmp_path / "other")))
    assert main(["check-config"]) == 0
    assert f"data directory: {tmp_path / 'other'}" in capsys.readouterr().out


def test_without_any_configuration_a_warning_names_the_data_directory(system_config, tmp_path, capsys):
    assert main(["check-config"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and str(tmp_path / "estampille-data") in err


@pytest.mark.parametrize("argv", [["queue"], ["proof", "<x@example.org>"], ["anchor", "status"], ["purge"],
                                  ["record", "00" * 32, "-o", "r.json"]])
def test_commands_reading_the_data_refuse_a_directory_without_it(system_config, tmp_path, capsys, argv):
    """Before: `queue` said 'no deferred or failed deliveries' over a directory it had just made."""
    write_config(system_config, tmp_path / "var")
    assert main(argv) == cli.EXIT_CONFIG
    assert f"no relay data in {tmp_path / 'var'}" in capsys.readouterr().err
    assert not (tmp_path / "var").exists()


def test_config_may_come_before_the_command(system_config, tmp_path, capsys):
    path = write_config(tmp_path / "elsewhere.toml", tmp_path / "var")
    assert main(["--config", str(path), "check-config"]) == 0
    assert f"configuration OK: {path}" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("estampille 0.")


def test_anchor_synopsis_reads_as_a_command_line(capsys):
    with pytest.raises(SystemExit):
        main(["anchor", "--help"])
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage.endswith("[--now] [status]"), usage


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`estampille check-config --keys | head`: the reader is gone before the first write, every time."""
    config = write_config(tmp_path / "estampille.toml", tmp_path / "var")
    process = subprocess.Popen([sys.executable, "-m", "relay.cli", "check-config", "--keys", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == cli.EXIT_RUNTIME
    assert stderr == ""
