"""No private API of a dependency anywhere in the project (issue 21, point 3).

Private means a name starting with one underscore (dunders are the language's); a dependency
is any package outside the project and the standard library. The project must not import one
from a dependency (``from aiosmtplib.protocol import _x``), read one off an imported module
(``dkim._x``), in a subclass of a dependency's class override or read one of the base's
(``def _getaddr``, ``self._writer``), nor read, off any object, a private name that a
dependency's class defines and the project does not (``self._db._execute``). An exception needs
a pinned version range in pyproject.toml and a test that fails when the private behaviour
changes: it goes in ALLOWED with that reason.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("relay", "tracker", "tests", "bench")
SCANNED = [ROOT / name for name in PROJECT]
# The run-time dependencies (pyproject.toml), whose classes' private names are looked for on any object.
RUNTIME = frozenset({"aiosmtpd", "aiosmtplib", "aiohttp", "aiohttp_jinja2", "aiosqlite", "dkim", "cryptography",
                     "opentimestamps", "bitcoin", "prometheus_client", "uvloop"})
# (file relative to the root, private name) -> why it is worth it and what pins it.
ALLOWED: dict[tuple[str, str], str] = {
    # Tests only: rfc3161-client (pinned <2) has no public parser of a time-stamp request, and the
    # local TSA reads the request's nonce to answer with a wrong one; test_tsa's nonce case fails
    # if that changes.
    ("tests/support/tsa.py", "_rust"): "the local TSA's fault injection reads a request's nonce",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _foreign(module: str | None) -> bool:
    top = (module or "").split(".")[0]
    return bool(top) and top not in PROJECT and top not in sys.stdlib_module_names


def _python_files() -> Iterator[Path]:
    for folder in SCANNED:
        yield from (p for p in folder.rglob("*.py") if "node_modules" not in p.parts)


def _imported(tree: ast.Module) -> dict[str, object]:
    """The names bound to a foreign module or class by the file's imports."""
    bound: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _foreign(alias.name):
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name.split(".")[0] if not alias.asname \
                        else alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _foreign(node.module):
            for alias in node.names:
                bound[alias.asname or alias.name] = (node.module, alias.name)
    return bound


def _resolve(target: object) -> object | None:
    try:
        if isinstance(target, str):
            return importlib.import_module(target)
        module, name = target  # type: ignore[misc]
        found = importlib.import_module(module)
        return getattr(found, name, None) or importlib.import_module(f"{module}.{name}")
    except ImportError:
        return None


def _base_privates(bases: list[type]) -> set[str]:
    """Private names a dependency's class defines or sets on its instances."""
    names: set[str] = set()
    for klass in {k for base in bases for k in base.__mro__}:
        if klass.__module__.split(".")[0] in (*PROJECT, "builtins"):
            continue
        names.update(n for n in vars(klass) if _private(n))
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names.update(re.findall(r"\b(_[A-Za-z0-9]\w*)", source))  # what it defines, reads or sets
    return names


def _defined_privates(tree: ast.AST) -> set[str]:
    """Private names a file defines: functions, classes, assigned names and attributes, arguments."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name)
    return {n for n in names if _private(n)}


def _dependency_privates(modules: set[str]) -> set[str]:
    """Private names defined by the classes of the given dependency modules."""
    classes: list[type] = []
    for name in modules:
        module = _resolve(name)
        classes += [c for c in vars(module).values() if isinstance(c, type) and c.__module__.startswith(name)] \
            if module is not None else []
    return _base_privates(classes)


def uses_of_private_names(path: Path, foreign_privates: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    """Each use of a dependency's private name in ``path``; ``foreign_privates``, those that
    dependencies define and the project does not, are caught on any object."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound = _imported(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in foreign_privates:
            found.append((node.lineno, f".{node.attr}"))
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if _foreign(a.name) and any(_private(part) for part in a.name.split("."))]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _foreign(node.module):
            parts = [*(node.module or "").split("."), *(a.name for a in node.names)]
            found += [(node.lineno, part) for part in parts if _private(part)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in bound:
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.ClassDef):
            bases = [_resolve(bound[b.id]) for b in node.bases if isinstance(b, ast.Name) and b.id in bound]
            bases += [getattr(_resolve(bound[b.value.id]), b.attr, None) for b in node.bases
                      if isinstance(b, ast.Attribute) and isinstance(b.value, ast.Name) and b.value.id in bound]
            privates = _base_privates([b for b in bases if isinstance(b, type)])
            for inner in ast.walk(node):
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef) and inner.name in privates:
                    found.append((inner.lineno, f"{node.name}.{inner.name} overrides a private method"))
                elif isinstance(inner, ast.Attribute) and inner.attr in privates and \
                        isinstance(inner.value, ast.Name) and inner.value.id == "self":
                    found.append((inner.lineno, f"{node.name} uses self.{inner.attr}"))
    return found


def test_no_private_api_of_a_dependency_outside_the_allowlist() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in _python_files()}
        ours = set().union(*(_defined_privates(tree) for tree in trees.values()))
        imported = {module for tree in trees.values() for target in _imported(tree).values()
                    if (module := target if isinstance(target, str) else target[0]).split(".")[0] in RUNTIME}
        foreign = frozenset(_dependency_privates(imported) - ours)
        offences = {
            (str(path.relative_to(ROOT)), line, name)
            for path in trees
            for line, name in uses_of_private_names(path, foreign)
        }
    finally:
        sys.path.remove(str(ROOT))
    unexplained = sorted(o for o in offences if (o[0], o[2]) not in ALLOWED)
    assert not unexplained, unexplained


def test_the_check_finds_each_kind_of_private_use(tmp_path: Path) -> None:
    """The check itself: each way of reaching a private name is caught, public ones are not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from aiosmtplib.protocol import _SOMETHING\n"
        "from aiosmtpd.smtp import SMTP\n"
        "import dkim\n"
        "dkim._private_thing\n"
        "dkim.fold\n"
        "class Mine(SMTP):\n"
        "    def _getaddr(self, arg): ...\n"
        "    def _own_helper(self): ...\n"
        "    def shut(self):\n"
        "        self._writer.write(b'')\n"
        "        self.transport.close()\n"
        "def commit(store):\n"
        "    store._db._execute(len, store._db._conn)\n"
        "import email._parseaddr\n"
    )
    names = sorted(name for _, name in uses_of_private_names(sample, frozenset({"_execute", "_conn"})))
    assert names == sorted([
        "_SOMETHING", "dkim._private_thing", "Mine._getaddr overrides a private method",
        "Mine uses self._writer", "._execute", "._conn",
    ])
