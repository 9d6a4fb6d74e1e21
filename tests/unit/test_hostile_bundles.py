"""The verifier given hostile bundles: each is refused with exit 2 and one line (valid JSON
with --json), in a separate process whose peak memory is measured, writing nothing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from relay import cli
from relay.anchor.headers import format_headers_file
from relay.evidence.archive import MAX_JSON_DEPTH, BundleProblem, read_zip
from tests.support.hostile import Entry, write_zip, zero_bomb
from tests.support.proofdata import Keys, build_input
from tests.unit.test_proof import reforge

MAX_RSS_BYTES = 200 * 2**20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A valid bundle's files and the headers file its proofs need."""
    built = build_input(2, Keys.generate())
    headers = tmp_path_factory.mktemp("headers") / "headers.txt"
    headers.write_text(format_headers_file(built.headers))
    return read_zip(built.bundle()), headers


def entries(files: dict[str, bytes]) -> list[Entry]:
    return [Entry(name, data) for name, data in files.items()]


def scripted(files: dict[str, bytes]) -> bytes:
    files = dict(files)
    files["attestation.html"] = files["attestation.html"].replace(
        b"</body>", b"<script>document.body.innerHTML = 'VALIDE'</script></body>")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in reforge(files).items():
            zf.writestr(name, data)
    return out.getvalue()


def many_small_bombs(files: dict[str, bytes]) -> bytes:
    """512 entries of 1 MiB of zeros, each under the per-entry ratio's floor: 512 MiB from 0.6 MB."""
    one = zero_bomb("copies/a.eml", 1)
    return write_zip([*entries(files), *(replace(one, name=f"copies/{n:04d}.eml") for n in range(512))])


HOSTILE = {
    "bomb": (lambda f: write_zip([*entries(f), zero_bomb("copies/99-bomb.eml", 1024)]), "archive"),
    "many small bombs": (many_small_bombs, "archive"),
    "deep manifest": (lambda f: write_zip([*entries({**f, "manifest.json": b"[" * 100_000 + b"]" * 100_000})]),
                      "JSON"),
    "duplicate entries": (lambda f: write_zip([*entries(f), Entry("message/original.eml", b"forged\r\n")]),
                          "archive"),
    "duplicate by case": (lambda f: write_zip([*entries(f), Entry("Message/Original.eml", b"forged\r\n")]),
                          "archive"),
    "dot-dot": (lambda f: write_zip([*entries(f), Entry("../escaped.eml", b"x")]), "archive"),
    "absolute": (lambda f: write_zip([*entries(f), Entry("/tmp/escaped-estampille.eml", b"x")]), "archive"),
    "symlink": (lambda f: write_zip([*entries(f), Entry("keys/link.txt", b"/etc/passwd",
                                                        mode=stat.S_IFLNK | 0o777)]), "archive"),
    "scripted attestation": (scripted, "regenerated"),
}


def run_measured(argv: list[str], cwd: Path, tmp: Path, rss_file: Path) -> tuple[int, str, str, int]:
    """Run ``estampille`` in a child process; its exit code, output, and peak RSS in bytes."""
    env = {**os.environ, "TMPDIR": str(tmp), "HOME": str(tmp), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "tests/support/peak_rss.py"), str(rss_file),
                           sys.executable, "-m", "relay.cli", *argv], cwd=cwd, env=env, capture_output=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode(), int(rss_file.read_text())


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_bundle_is_refused_in_bounded_memory_writing_nothing(valid, tmp_path, kind):
    files, headers = valid
    make, check = HOSTILE[kind]
    bundle = tmp_path / "in" / "bundle.zip"
    bundle.parent.mkdir()
    bundle.write_bytes(make(files))
    assert bundle.stat().st_size < 2 * 2**20
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    rss_file = tmp_path.parent / f"{tmp_path.name}.rss"  # outside the directory checked below

    code, out, err, rss = run_measured(["verify", str(bundle), "--headers", str(headers), "--regtest", "--json"],
                                       cwd, tmp, rss_file)
    assert code == 2, (out, err)
    report = json.loads(out)
    assert report["status"] == "invalid" and report["problem"]["check"] == check, report
    assert err == ""
    print(f"{kind}: peak RSS {rss / 2**20:.0f} MiB")
    assert rss < MAX_RSS_BYTES, f"peak RSS {rss / 2**20:.0f} MiB"
    # Nothing written: not beside the bundle, not in the working or temporary directory, not above.
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "cwd", "in", "in/bundle.zip", "tmp"]
    assert not Path("/tmp/escaped-estampille.eml").exists()

    text = io.StringIO()  # the same in text: one line
    with contextlib.redirect_stdout(text):
        assert cli.main(["verify", str(bundle), "--headers", str(headers), "--regtest"]) == 2
    assert text.getvalue().count("\n") == 1 and text.getvalue().startswith("INVALID: "), text.getvalue()


def test_records_nested_past_the_bound_are_refused_not_crashed(valid):
    from relay.evidence.bundle_check import verify_files

    files, _ = valid
    path = next(p for p in files if p.startswith("records/submission-") and p.endswith(".json"))
    deep = b'{"x":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1)
    report = verify_files(reforge({**files, path: deep}), {}, regtest=True)
    assert report.exit_code == 2 and (report.problem.path, report.problem.check) == (path, "JSON")


def test_an_unpacked_bundle_with_a_link_is_refused(valid, tmp_path):
    files, headers = valid
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["verify", str(tmp_path), "--headers", str(headers), "--regtest"]) == 0
    (tmp_path / "keys" / "passwd.txt").symlink_to("/etc/passwd")
    with contextlib.redirect_stdout(out):
        assert cli.main(["verify", str(tmp_path), "--headers", str(headers), "--regtest"]) == 2
    assert "keys/passwd.txt: archive failed: a link or device entry" in out.getvalue()


def test_the_ratio_limit_can_be_raised_by_a_reader_who_trusts_the_bundle(valid):
    """A legitimate copy can be nearly all one byte (a blank uncompressed scan, in base64)."""
    files, _ = valid
    blank = zero_bomb("copies/99-scan.eml", 2)  # 2 MiB, deflated about 1,000 times
    data = write_zip([*entries(files), blank])
    with pytest.raises(BundleProblem, match="compression-ratio"):
        read_zip(data)
    assert len(read_zip(data, max_ratio=2000)["copies/99-scan.eml"]) == 2 * 2**20
    with pytest.raises(BundleProblem, match="compression-ratio"):  # the size caps stay
        read_zip(write_zip([*entries(files), zero_bomb("copies/99-bomb.eml", 1024)]), max_ratio=2000)



def test_a_refusal_is_one_line_whatever_the_error_text_holds():
    from relay.evidence.bundle_check import cannot_verify

    report = cannot_verify(BundleProblem("records/x.json", "cannot verify", "ValueError: line one\nline two\r\n"))
    assert report.summary() == "INVALID: records/x.json: cannot verify failed: ValueError: line one line two"


def test_a_failing_header_source_is_not_blamed_on_the_bundle(valid):
    """'cannot verify' is for the bundle; a source that fails is the CLI's exit 4, to try again."""
    from relay.errors import HeaderSourceError
    from relay.evidence.bundle_check import verify_files

    class Down(Mapping[int, bytes]):  # as relay.proof.gather asks a source, on demand
        def __getitem__(self, height: int) -> bytes:
            raise HeaderSourceError("explorer unreachable")

        def __iter__(self) -> Iterator[int]:
            return iter(())

        def __len__(self) -> int:
            return 0

    files, _ = valid
    with pytest.raises(HeaderSourceError):
        verify_files(files, Down(), regtest=True)


def test_an_entry_whose_directory_declares_a_larger_size_is_refused(valid):
    """Before: zipfile checks an entry's CRC, not the size the central directory declares, so the
    command read such a damaged archive where the browser page refuses it. (A smaller declared
    size already failed, on the CRC.)"""
    files, _ = valid
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    archive = bytearray(out.getvalue())
    name = b"manifest.json"
    at = archive.index(name, archive.index(b"PK\x01\x02")) - 46  # the central directory entry naming it
    size = int.from_bytes(archive[at + 24:at + 28], "little")  # its uncompressed size
    archive[at + 24:at + 28] = (size + 1).to_bytes(4, "little")
    with pytest.raises(BundleProblem, match="than declared"):
        read_zip(bytes(archive))
