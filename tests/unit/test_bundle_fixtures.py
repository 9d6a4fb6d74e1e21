"""Proofs outlive versions: bundles made by earlier releases (tests/fixtures/bundles, see its
README) still verify with today's verifier, which says which format each one is."""

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


@pytest.mark.parametrize("bundle, headers, code, status", [
    ("v1-synthetic-confirmed.zip", "v1-synthetic-confirmed.headers", 0, "verified"),
    ("v1-relay-confirmed.zip", "v1-relay-confirmed.headers", 0, "verified"),
    ("v1-synthetic-pending.zip", "v1-synthetic-confirmed.headers", 1, "pending"),
])
def test_a_format_1_bundle_still_verifies(bundle, headers, code, status):
    got, report = verify(bundle, headers)
    assert (got, report["status"]) == (code, status), report["problem"]
    assert report["format_version"] == 1
    # Its printable files are what release 1 wrote: listed, never shown as verified.
    assert {f["path"]: f["checked"] for f in report["informative_only"]} == {
        "attestation.html": "made by bundle format 1: not regenerated, not verified",
        "VERIFY.md": "made by bundle format 1: not regenerated, not verified",
    }


def test_the_relayed_format_1_bundle_keeps_its_earlier_answer_and_acknowledgment():
    _, report = verify("v1-relay-confirmed.zip", "v1-relay-confirmed.headers")
    by = {r["recipient"]: r for r in report["recipients"]}
    assert by["carol@example.net"]["earlier_answers"] == ["451 4.3.0 try again later"]
    assert by["bob@example.net"]["acknowledged_at"] and all(r["copy"] == "checked" for r in by.values())


def test_every_format_a_release_wrote_is_readable_and_kept_as_a_fixture():
    assert READABLE_VERSIONS == tuple(range(1, FORMAT_VERSION + 1))
    made = {int(p.name[1:].split("-")[0]) for p in FIXTURES.glob("v*.zip")}
    assert made == set(READABLE_VERSIONS) - {FORMAT_VERSION}  # the current format is built by the tests
