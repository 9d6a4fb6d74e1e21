"""Documentation cannot drift: every configuration key is in the example file with a
comment, the example loads, and every command has help (Datasette's test_docs habit)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from relay.cli import build_parser, main
from relay.config import Config, documented_keys

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "estampille.example.toml"
SECTION = re.compile(r"^#?\s*\[\[?([a-z_.]+)\]\]?\s*$")
KEY = re.compile(r"^#?\s*([a-z_0-9]+)\s*=")


def example_keys() -> dict[str, bool]:
    """Dotted keys in the example file (commented-out examples count) -> preceded by a comment."""
    keys: dict[str, bool] = {}
    section = ""
    previous = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        found = SECTION.match(line)
        if found:
            section = found.group(1)
            keys[section] = previous.startswith("#") and not KEY.match(previous) and not SECTION.match(previous)
        elif (found := KEY.match(line)) is not None:
            dotted = f"{section}.{found.group(1)}" if section else found.group(1)
            keys[dotted] = previous.startswith("#") and not KEY.match(previous) and not SECTION.match(previous)
        previous = line.strip()
    return keys


@pytest.mark.parametrize("name", [name for name, _ in documented_keys()])
def test_every_key_is_in_the_example_with_a_comment(name):
    keys = example_keys()
    assert name in keys, f"{name} is missing from {EXAMPLE.name}"
    assert keys[name], f"{name} has no comment line above it in {EXAMPLE.name}"


@pytest.mark.parametrize("name,help_text", documented_keys())
def test_every_key_has_help(name, help_text):
    assert help_text.strip(), f"{name} has no help in relay/config.py"


def test_example_loads_and_shows_the_defaults():
    assert Config.from_file(EXAMPLE) == Config().resolve_paths(EXAMPLE.parent)


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield prefix + (name,), helps.get(name), sub
                yield from subcommands(sub, prefix + (name,))


COMMANDS = list(subcommands(build_parser()))


@pytest.mark.parametrize("path,help_text,parser", COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_every_command_has_help(path, help_text, parser, capsys):
    assert help_text, f"'estampille {' '.join(path)}' has no help"
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    assert parser.description or help_text in capsys.readouterr().out


def test_the_relay_commands_exist():
    names = {" ".join(path) for path, _, _ in COMMANDS}
    assert {"serve", "check-config", "queue", "queue retry", "passwd"} <= names
