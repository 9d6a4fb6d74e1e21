"""Proofs outlive versions: bundles of every format (tests/fixtures/bundles, see its README)
still verify with today's verifier, which says which format each one is."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from relay import cli
from relay.evidence.bundle import FORMAT_VERSION, READABLE_VERSIONS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles"


def verify(bundle: str, headers: str) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["verify", str(FIXTURES / bundle), "--headers", str(FIXTURES / headers), "--regtest", "--json"])
    return code, json.loads(out.getvalue())


@pytest.mark.parametrize("version", READABLE_VERSIONS)
@pytest.mark.parametrize("kind, headers, code, status", [
    ("synthetic-confirmed", "synthetic-confirmed", 0, "verified"),
    ("relay-confirmed", "relay-confirmed", 0, "verified"),
    ("synthetic-pending", "synthetic-confirmed", 1, "pending"),
])
def test_a_bundle_of_every_format_still_verifies(version, kind, headers, code, status):
    got, report = verify(f"v{version}-{kind}.zip", f"v{version}-{headers}.headers")
    assert (got, report["status"]) == (code, status), report["problem"]
    assert report["format_version"] == version
    # The printable files: regenerated in the current format, else what that release wrote,
    # listed and never shown as verified.
    checked = ("regenerated from the verified records: identical" if version == FORMAT_VERSION
               else f"made by bundle format {version}: not regenerated, not verified")
    printable = {"attestation.html": checked, "VERIFY.md": checked}
    if version >= 2:  # the page: compared with this release's, whatever the result the bundle verifies
        printable["verify.html"] = next(f["checked"] for f in report["informative_only"] if f["path"] == "verify.html")
        assert printable["verify.html"].startswith(("identical to this release's", "differs from this release's"))
    assert {f["path"]: f["checked"] for f in report["informative_only"]} == printable


@pytest.mark.parametrize("version", READABLE_VERSIONS)
def test_the_relayed_bundle_keeps_its_earlier_answer_and_acknowledgment(version):
    _, report = verify(f"v{version}-relay-confirmed.zip", f"v{version}-relay-confirmed.headers")
    by = {r["recipient"]: r for r in report["recipients"]}
    assert by["carol@example.net"]["earlier_answers"] == ["451 4.3.0 try again later"]
    assert by["bob@example.net"]["acknowledged_at"] and all(r["copy"] == "checked" for r in by.values())


def test_a_format_2_bundle_for_one_recipient_verifies_and_says_so():
    code, report = verify("v2-relay-carol.zip", "v2-relay-confirmed.headers")
    assert code == 0 and report["scope"] == "carol@example.net", report["problem"]
    assert {r["recipient"]: r["copy"] for r in report["recipients"]} == {
        "alice@example.net": "withheld", "bob@example.net": "withheld", "carol@example.net": "checked"}


def test_every_format_a_release_wrote_is_readable_and_kept_as_a_fixture():
    assert READABLE_VERSIONS == tuple(range(1, FORMAT_VERSION + 1))
    assert {int(p.name[1:].split("-")[0]) for p in FIXTURES.glob("v*.zip")} == set(READABLE_VERSIONS)


def test_a_format_2_bundle_carries_a_checked_rfc_3161_token_for_every_record():
    code, report = verify("v2-relay-confirmed.zip", "v2-relay-confirmed.headers")
    assert code == 0, report["problem"]
    tokens = [r["tsa"] for r in report["records"]]
    assert tokens and all(t is not None and t["tsa"] == "Local TSA" and t["qualified"] for t in tokens)
    assert len({t["time"] for t in tokens}) == 1  # one batch, one token
    # Format 1 had none, and is not asked for any.
    _, v1 = verify("v1-relay-confirmed.zip", "v1-relay-confirmed.headers")
    assert all(r["tsa"] is None for r in v1["records"])
