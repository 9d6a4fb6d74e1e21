"""Every record's time is bounded by its anchor (issue #17, point 2): a back-dated receipt
anchored 12 days after the time it claims fails, naming the record."""

from __future__ import annotations

import json

import pytest

from relay.anchor.headers import format_headers_file
from relay.cli import main
from relay.evidence.archive import read_zip
from relay.evidence.bundle_check import EXIT_INVALID, EXIT_VERIFIED, verify_files
from tests.support.proofdata import BLOCK_TIME, HEIGHT, Keys, build_input

BACKDATED = "2026-11-06T11:06:40.000000Z"  # 12 days before BLOCK_TIME (2026-11-18 11:06:40 UTC)
WITHIN = "2026-11-17T11:06:40.000000Z"  # 24 h before it


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.generate()


def receipt_path(files: dict[str, bytes]) -> str:
    manifest = json.loads(files["manifest.json"])
    return manifest["facts"]["recipients"][0]["acknowledgment"]


def test_a_receipt_anchored_twelve_days_after_its_claim_is_invalid_naming_it(keys):
    built = build_input(2, keys, ack_at=BACKDATED)
    files = read_zip(built.bundle())
    report = verify_files(files, built.headers, regtest=True)
    assert report.exit_code == EXIT_INVALID
    assert (report.problem.path, report.problem.check) == (receipt_path(files), "anchor delay")
    assert f"claims {BACKDATED}" in report.problem.detail and "2026-11-18 11:06:40 UTC" in report.problem.detail
    assert "288.0 h later, more than the 48 h allowed" in report.problem.detail
    # The bound is the verifier's to set: 12 days and a half let it through.
    assert verify_files(files, built.headers, regtest=True, max_anchor_delay=300 * 3600).exit_code == EXIT_VERIFIED


def test_each_record_reports_its_claimed_and_proven_times_and_the_summary_each_receipt(keys):
    built = build_input(2, keys, ack_at=WITHIN)
    files = read_zip(built.bundle())
    report = verify_files(files, built.headers, regtest=True)
    assert report.exit_code == EXIT_VERIFIED, report.summary()
    receipt = next(r for r in report.records if r.path == receipt_path(files))
    assert (receipt.claimed_at, receipt.anchor.block_time) == (WITHIN, BLOCK_TIME)
    assert {r.type: r.claimed_at for r in report.records}["submission"] == "2026-11-29T06:00:01.000000Z"
    text = report.summary()
    assert f"acknowledged: {WITHIN}\n      proven by:  2026-11-18 11:06:40 UTC (Bitcoin block {HEIGHT})" in text
    assert f"receipt    {receipt.path}: claims {WITHIN}; existed by 2026-11-18 11:06:40 UTC" in text
    as_json = report.to_json()
    record = next(r for r in as_json["records"] if r["path"] == receipt.path)
    assert (record["claimed_at"], record["proven_at"]) == (WITHIN, "2026-11-18 11:06:40 UTC")


def test_estampille_verify_exits_2_naming_the_backdated_record(keys, tmp_path, capsys):
    built = build_input(2, keys, ack_at=BACKDATED)
    bundle, headers = tmp_path / "proof.zip", tmp_path / "headers.txt"
    bundle.write_bytes(built.bundle())
    headers.write_text(format_headers_file(built.headers))
    path = receipt_path(read_zip(bundle.read_bytes()))
    args = ["verify", str(bundle), "--headers", str(headers), "--regtest"]
    assert main(args) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"INVALID: {path}: anchor delay failed: claims {BACKDATED}"), out
    assert main([*args, "--max-anchor-delay", "13d"]) == 0
    assert "VERIFIED" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--max-anchor-delay", "soon"])


def test_verify_ots_bounds_an_evidence_record_the_same_way(keys, tmp_path, capsys):
    built = build_input(2, keys, ack_at=BACKDATED)
    files = read_zip(built.bundle())
    path = receipt_path(files)
    record, proof, headers = tmp_path / "r.json", tmp_path / "r.json.ots", tmp_path / "headers.txt"
    record.write_bytes(files[path])
    proof.write_bytes(files[path + ".ots"])
    headers.write_text(format_headers_file(built.headers))
    args = ["verify-ots", str(record), str(proof), "--headers", str(headers), "--regtest"]
    assert main(args) == 2
    assert capsys.readouterr().out.startswith(f"invalid: claims {BACKDATED}, but its anchor proves it existed only by")
    assert main([*args, "--max-anchor-delay", "13d"]) == 0
    assert capsys.readouterr().out.startswith(f"verified: Bitcoin block {HEIGHT}")
