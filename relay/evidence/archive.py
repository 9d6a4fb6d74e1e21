"""A proof bundle's files read as hostile input: bounded reads, no escaping names, no links.

A bundle reaches the verifier from anyone, years after it was made. Before any
check of its content, its archive (a zip, or a directory it was unpacked into) is
read under limits, each a named constant below:

- each entry is streamed in chunks and counted as it expands: past
  ``MAX_ENTRY_BYTES``, or past ``MAX_RATIO`` times its compressed size (once over
  ``RATIO_FLOOR``), or once the whole bundle passes ``MAX_TOTAL_BYTES`` or
  ``MAX_RATIO`` times the archive's size, reading stops; memory never holds more
  than the bundle's files up to those caps;
- every name is a plain relative path of ASCII letters, digits and ``._@+=~-``
  (no ``..``, no absolute or drive name, no backslash, no empty part), names are unique even ignoring case (``unzip`` keeps
  the first of two equal names, a verifier would see the last), and an entry is a
  regular file or a directory, never a link or a device;
- JSON is parsed only once its nesting is known to be under ``MAX_JSON_DEPTH``.

Every refusal is a :class:`BundleProblem` naming the entry and the check, which the
verifier reports as "cannot verify" (exit 2). Nothing is ever written to disk.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

from relay.errors import VerificationError

MAX_FILES = 100_000  # a 100-recipient bundle holds about 1,500; far more is not a proof bundle
MAX_ENTRY_BYTES = 128 * 2**20  # a message of smtp.max_message_size (50 MiB), re-encoded by certify, fits
MAX_TOTAL_BYTES = 4 * 2**30
# Expanded / compressed size of one entry: mail, PDFs, images and records deflate 1 to 30 times;
# only uncompressed media (a blank BMP or TIFF, in base64) comes near deflate's limit of about
# 1,000, and `estampille verify --max-ratio` lets a reader who trusts the bundle raise it.
MAX_RATIO = 100
RATIO_FLOOR = 2**20  # entries smaller than this are never refused for their ratio
MAX_JSON_DEPTH = 32  # a manifest nests 5 deep, a record 3
CHUNK = 2**16
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_FILE_TYPES = (0, stat.S_IFREG, stat.S_IFDIR)  # 0: the archiver recorded no Unix mode
# What zipfile raises on damaged archives (a flipped bit can hit a header, a method, the deflate stream).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError)
_NAME = re.compile(r"[A-Za-z0-9._@+=~-]+(/[A-Za-z0-9._@+=~-]+)*/?")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_NESTING = re.compile(rb"[\[\]{}]")


class BundleProblem(VerificationError):
    """A bundle file fails a check; ``path`` names the file and ``check`` the check."""

    def __init__(self, path: str, check: str, detail: str) -> None:
        super().__init__(f"{path}: {check}: {detail}")
        self.path = path
        self.check = check
        self.detail = detail


def shown(name: str) -> str:
    """A hostile entry name as it can be printed and put in JSON: escaped, cut short."""
    return name.encode("unicode_escape", "backslashreplace").decode("ascii")[:200]


def check_name(name: str) -> str:
    """``name`` if it is a plain relative path inside the bundle; BundleProblem otherwise.

    Bundles name their files with ASCII letters, digits and ``._@+-`` only; anything
    else (a backslash, a colon, a control or look-alike character) is refused."""
    if not _NAME.fullmatch(name):
        raise BundleProblem(shown(name), "archive", "absolute or malformed entry name")
    if any(part in (".", "..") for part in name.rstrip("/").split("/")):
        raise BundleProblem(shown(name), "archive", "entry name with a '.' or '..' part")
    return name


class _Budget:
    """The bytes a bundle may still expand to, across all of its entries."""

    def __init__(self, max_ratio: int, archive_size: int | None) -> None:
        self.max_ratio = max_ratio
        self.left = MAX_TOTAL_BYTES
        if archive_size is not None:  # the whole bundle too: many entries under RATIO_FLOOR, or sharing data
            self.left = min(self.left, max(RATIO_FLOOR, max_ratio * archive_size))
        self.seen: set[str] = set()

    def name(self, name: str) -> str:
        key = check_name(name).rstrip("/").casefold()
        if key in self.seen:
            raise BundleProblem(shown(name), "archive", "two entries with this name (or names differing only by case)")
        self.seen.add(key)
        return name

    def read(self, name: str, stream: IO[bytes], declared: int, compressed: int | None) -> bytes:
        """Read ``stream`` to its end, refusing it (before reading, from its declared size,
        or as it expands) once it outgrows a limit."""
        cap = min(MAX_ENTRY_BYTES, self.left)
        if compressed is not None:
            cap = min(cap, max(RATIO_FLOOR, self.max_ratio * compressed))
        too_big = BundleProblem(name, "archive", "expands past the size or compression-ratio limit (zip bomb?)")
        if declared > cap:
            raise too_big
        chunks, size = [], 0
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > cap:
                raise too_big
            chunks.append(chunk)
        if size != declared:  # zipfile checks the CRC, not the size the directory declares
            raise BundleProblem(name, "archive", f"cannot be read from the zip ({'smaller' if size < declared else 'larger'}"
                                " than declared)")
        self.left -= size
        return b"".join(chunks)


def read_zip(source: bytes | Path | IO[bytes], name: str = "bundle.zip", *, max_ratio: int = MAX_RATIO) -> dict[str, bytes]:
    """The regular files of a zip bundle (path -> bytes), read within the limits above."""
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(source, bytes):
                source = io.BytesIO(source)
            elif isinstance(source, Path):
                source = stack.enter_context(open(source, "rb"))
            size = source.seek(0, io.SEEK_END)
            zf = stack.enter_context(zipfile.ZipFile(source))
            return _read_entries(zf, _Budget(max_ratio, size))
    except BundleProblem:
        raise
    except _ZIP_ERRORS as exc:
        raise BundleProblem(name, "archive", f"not a readable zip file ({exc})") from exc


def _read_entries(zf: zipfile.ZipFile, budget: _Budget) -> dict[str, bytes]:
    infos = zf.infolist()
    if len(infos) > MAX_FILES:
        raise BundleProblem("bundle.zip", "archive", f"more than {MAX_FILES} entries: not a proof bundle")
    files = {}
    for info in infos:
        path = budget.name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_IFMT(mode) not in _FILE_TYPES:
            raise BundleProblem(path, "archive", "a link or device entry, not a regular file")
        if info.flag_bits & 0x1 or info.compress_type not in _ZIP_METHODS:
            raise BundleProblem(path, "archive", "encrypted, or compressed with a method bundles never use")
        if info.is_dir():
            continue
        try:
            with zf.open(info) as stream:
                files[path] = budget.read(path, stream, info.file_size, info.compress_size)
        except _ZIP_ERRORS as exc:
            raise BundleProblem(path, "archive", f"cannot be read from the zip ({exc})") from exc
    return files


def read_directory(root: Path) -> dict[str, bytes]:
    """The files of a bundle unpacked into ``root``, within the same limits; links are refused."""
    try:
        return _read_tree(root)
    except OSError as exc:
        raise BundleProblem(shown(str(exc.filename or root)), "archive", f"cannot be read ({exc.strerror})") from exc


def _read_tree(root: Path) -> dict[str, bytes]:
    budget = _Budget(MAX_RATIO, None)  # files on disk have no compressed size: only the size caps apply
    files: dict[str, bytes] = {}
    for top, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for entry in [*dirs, *sorted(names)]:
            full = Path(top, entry)
            path = budget.name(full.relative_to(root).as_posix())
            mode = full.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise BundleProblem(path, "archive", "a link or device entry, not a regular file")
            if stat.S_ISREG(mode):
                if len(files) >= MAX_FILES:
                    raise BundleProblem(path, "archive", f"more than {MAX_FILES} files: not a proof bundle")
                with open(full, "rb") as stream:
                    files[path] = budget.read(path, stream, os.fstat(stream.fileno()).st_size, None)
    return files


def load_json(path: str, raw: bytes) -> Any:
    """Parse a bundle's JSON file after bounding its nesting (deep nesting exhausts the parser's stack)."""
    depth = deepest = 0
    for bracket in _JSON_NESTING.findall(_JSON_STRING.sub(b"", raw)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            raise BundleProblem(path, "JSON", f"nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleProblem(path, "JSON", f"not valid JSON ({exc})") from exc
