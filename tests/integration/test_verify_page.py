"""verify.html (issue #25) in Debian's chromium: a genuine bundle verifies with headers from two
local Esplora-like explorers; 30 seeded single-byte mutations each fail naming the file, as
`estampille verify` does on the same bundles; forged anchors fail; the page requests nothing but
the explorers typed in. Screenshots go to test-artifacts/."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import zipfile
from pathlib import Path

import aiohttp
import pytest

from relay.anchor.headers import format_headers_file, parse_headers_file
from relay.cli import main
from relay.evidence import bundle as proof
from relay.evidence.archive import read_zip
from relay.evidence.bundle import MANIFEST
from relay.evidence.bundle_check import verify_files
from relay.evidence.ots_verify import block_hash
from tests.conftest import require_tool
from tests.support.proofdata import HEIGHT, Keys, build_input, mine_header
from tests.support.relay import relay_config, running
from tests.support.verifypage import PAGE, check_bundle, explorers, verify_page
from tests.unit.test_hostile_bundles import HOSTILE
from tests.unit.test_proof import claiming_confirmed, reforge

pytestmark = pytest.mark.external
MUTATIONS = 30
SEED = 25


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.generate()


def rezip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in sorted(files.items()):
            zf.writestr(path, data)
    return out.getvalue()


def mutations(bundle: bytes, *, forger: bool) -> list[tuple[str, bytes]]:
    """Seeded: a random file, a random byte of it changed to another value. A ``forger`` also
    recomputes the manifest, so that the checks past the SHA-256s must catch it; a forger's edit of
    attestation.html or VERIFY.md only `estampille verify` catches (it regenerates them; the page
    reports them as not checked), and one of verify.html neither (it is for people, not evidence),
    so those are left out of a forger's choice."""
    files = read_zip(bundle)
    rng = random.Random(SEED)
    informative = (proof.ATTESTATION, proof.VERIFY_DOC, proof.VERIFY_PAGE)
    choices = sorted(p for p in files if not forger or p not in informative)
    out = []
    for _ in range(MUTATIONS):
        path = rng.choice(choices)
        data = bytearray(files[path])
        offset = rng.randrange(len(data))
        data[offset] ^= rng.randrange(1, 256)
        mutated = {**files, path: bytes(data)}
        out.append((path, rezip(reforge(mutated) if forger and path != MANIFEST else mutated)))
    return out


async def estampille_verify(tmp_path, capsys, bundle: bytes, headers: dict[int, bytes]) -> dict:
    """The command's JSON report on the same bundle."""
    (tmp_path / "bundle.zip").write_bytes(bundle)
    (tmp_path / "headers.txt").write_text(format_headers_file(headers))
    args = ["verify", str(tmp_path / "bundle.zip"), "--headers", str(tmp_path / "headers.txt"), "--regtest", "--json"]
    capsys.readouterr()
    await asyncio.to_thread(main, args)  # the CLI runs its own event loop
    return json.loads(capsys.readouterr().out)


async def check_states(page) -> dict[str, tuple[str, str]]:
    """Each check's state and the text a person reads next to it."""
    items = await page.query_selector_all("#checks li")
    return {await li.get_attribute("data-check"): (await li.get_attribute("data-state"), await li.inner_text())
            for li in items}


async def test_a_genuine_bundle_shows_verified_for_every_check(keys, artifacts_dir) -> None:
    chromium = require_tool("chromium")
    built = build_input(3, keys)
    async with explorers(built.headers) as bases, verify_page(chromium) as page:
        report = await check_bundle(page, built.bundle(), explorers=bases)
        assert report["status"] == "verified", report.get("problem")
        states = await check_states(page)
        assert set(states) == {"files", "chain", "dkim", "anchors", "bound"}
        assert all(state == "ok" and "vérifié" in text for state, text in states.values()), states
        assert await page.inner_text("#verdict") == "VÉRIFIÉ"
        assert [r["dkim"] for r in report["recipients"]][0] == [
            "rsa-sha256 d=mairie-exemple.fr s=rsa valid", "ed25519-sha256 d=mairie-exemple.fr s=ed valid"]
        assert [r["anchor"]["bitcoin_height"] for r in report["records"]] == [HEIGHT] * 8  # submission, 3 deliveries, 3 hand-offs, 1 receipt
        await page.screenshot(path=str(artifacts_dir / "verify-page-fr.png"), full_page=True)
        await page.click("[data-lang=en]")
        assert await page.inner_text("#verdict") == "VERIFIED"
        assert all("verified" in text for _, text in (await check_states(page)).values())
        await page.screenshot(path=str(artifacts_dir / "verify-page-en.png"), full_page=True)
        # Nothing but the page itself and the two explorers typed in, each asked once per height.
        assert page.requests[0].startswith("file://")
        assert sorted(page.requests[1:]) == sorted(
            f"{base}/{path}" for base in bases
            for path in (f"block-height/{HEIGHT}", f"block/{block_hash(built.headers[HEIGHT])}/header"))


async def test_each_single_byte_mutation_fails_naming_the_file_as_estampille_verify_does(
    keys, tmp_path, capsys
) -> None:
    chromium = require_tool("chromium")
    built = build_input(3, keys)
    async with verify_page(chromium) as page:
        for path, bundle in mutations(built.bundle(), forger=False):
            report = await check_bundle(page, bundle, headers=built.headers)
            assert report["status"] == "invalid" and report["problem"]["file"] == path, (path, report["problem"])
            failed = [text for state, text in (await check_states(page)).values() if state == "fail"]
            assert len(failed) == 1 and path in failed[0] and "échec" in failed[0], failed
            cli = await estampille_verify(tmp_path, capsys, bundle, built.headers)
            assert (cli["status"], cli["problem"]["file"], cli["problem"]["check"]) == (
                report["status"], report["problem"]["file"], report["problem"]["check"]), path
        assert page.requests == [page.requests[0]]  # the page from file://, nothing else


async def test_a_forgers_mutations_fail_past_the_manifest_as_estampille_verify_does(keys, tmp_path, capsys) -> None:
    """The same mutations with the manifest recomputed: the records, chain, DKIM and proofs catch them."""
    chromium = require_tool("chromium")
    built = build_input(3, keys)
    checks = set()
    async with verify_page(chromium) as page:
        for path, bundle in mutations(built.bundle(), forger=True):
            report = await check_bundle(page, bundle, headers=built.headers)
            cli = await estampille_verify(tmp_path, capsys, bundle, built.headers)
            assert report["status"] == "invalid", (path, report)
            assert (cli["status"], cli["problem"]["file"], cli["problem"]["check"]) == (
                report["status"], report["problem"]["file"], report["problem"]["check"]), path
            checks.add(report["problem"]["check"])
        assert page.requests == [page.requests[0]]
    assert len(checks - {"sha256"}) >= 3, checks  # caught by the checks past the manifest


async def test_a_bundle_claiming_an_anchor_its_proof_does_not_show_fails(keys, tmp_path, capsys) -> None:
    """The manifest (and so the attestation) says confirmed; the .ots proofs are only pending."""
    chromium = require_tool("chromium")
    built = build_input(2, keys, confirmed=False)
    bundle = rezip(claiming_confirmed(built))
    async with verify_page(chromium) as page:
        report = await check_bundle(page, bundle)
    assert report["status"] == "invalid"
    assert (report["problem"]["file"], report["problem"]["check"]) == (MANIFEST, "anchoring")
    cli = await estampille_verify(tmp_path, capsys, bundle, {})
    assert (cli["status"], cli["problem"]["file"], cli["problem"]["check"]) == ("invalid", MANIFEST, "anchoring")


async def test_a_header_with_another_merkle_root_fails_on_the_proof(keys, tmp_path, capsys) -> None:
    """Explorers (here lying together) serve a block with valid proof of work that does not commit
    to the proofs: every attestation must check, so the first record's proof fails."""
    chromium = require_tool("chromium")
    built = build_input(2, keys)
    forged = {HEIGHT: mine_header(hashlib.sha256(b"another block").digest())}
    async with explorers(forged) as bases, verify_page(chromium) as page:
        report = await check_bundle(page, built.bundle(), explorers=bases)
        states = await check_states(page)
    assert report["status"] == "invalid" and report["problem"]["check"] == "timestamp"
    assert report["problem"]["file"].endswith(".ots") and "another Merkle root" in report["problem"]["detail"]
    assert states["anchors"][0] == "fail" and states["files"][0] == "ok"
    cli = await estampille_verify(tmp_path, capsys, built.bundle(), forged)
    assert (cli["problem"]["file"], cli["problem"]["check"]) == (report["problem"]["file"], "timestamp")


async def test_mainnet_rules_refuse_regtest_headers_and_a_pending_bundle_says_so(keys) -> None:
    chromium = require_tool("chromium")
    confirmed, pending = build_input(2, keys), build_input(2, keys, confirmed=False)
    async with verify_page(chromium) as page:
        report = await check_bundle(page, confirmed.bundle(), headers=confirmed.headers, regtest=False)
        assert report["status"] == "invalid" and "outside mainnet proof-of-work limits" in report["problem"]["detail"]
        report = await check_bundle(page, pending.bundle())
        assert report["status"] == "pending"
        assert (await check_states(page))["anchors"][0] == "pending"
        # No header source given: the anchors cannot be checked, which does not make the bundle invalid.
        report = await check_bundle(page, confirmed.bundle())
        assert report["status"] == "source" and f"block {HEIGHT}" in report["problem"]["detail"]
        states = await check_states(page)
        assert [states[c][0] for c in ("files", "chain", "dkim", "anchors")] == ["ok", "ok", "ok", "source"]
        assert "EN-TÊTES INDISPONIBLES" in await page.inner_text("#verdict")


class AlteredAfterSigning(Keys):
    """Signs, then changes the copy (the records fingerprint the changed copy): only DKIM can tell."""

    edit: tuple[bytes, bytes] = (b"", b"")

    def sign(self, message: bytes) -> bytes:
        return super().sign(message).replace(*self.edit)


@pytest.mark.parametrize("edit", [(b"18 h", b"20 h"), (b"Subject: Convocation", b"Subject: Invitation")])
async def test_a_copy_changed_after_signing_fails_dkim_as_estampille_verify_does(keys, tmp_path, capsys, edit) -> None:
    chromium = require_tool("chromium")
    altered = AlteredAfterSigning(keys.rsa_pem, keys.rsa_public, keys.ed_seed, keys.ed_public)
    object.__setattr__(altered, "edit", edit)
    built = build_input(2, altered)
    async with verify_page(chromium) as page:
        report = await check_bundle(page, built.bundle(), headers=built.headers)
        states = await check_states(page)
    assert report["status"] == "invalid" and report["problem"]["check"] == "DKIM", report
    assert report["problem"]["file"].startswith("copies/01-") and states["dkim"][0] == "fail"
    cli = await estampille_verify(tmp_path, capsys, built.bundle(), built.headers)
    assert (cli["problem"]["file"], cli["problem"]["check"]) == (report["problem"]["file"], "DKIM")
    assert ("body hash mismatch" in cli["problem"]["detail"]) == ("body hash mismatch" in report["problem"]["detail"])


async def test_damaged_zip_bytes_get_the_verdict_estampille_verify_gives(keys, tmp_path, capsys) -> None:
    """A byte of the archive itself changed (compressed data, sizes, names, dates): the page's own
    zip reader and inflate refuse what the CLI refuses, and a change to what no check covers (a date)
    leaves both verifying."""
    chromium = require_tool("chromium")
    built = build_input(2, keys)
    bundle = built.bundle()
    rng = random.Random(SEED)
    verdicts = set()
    async with verify_page(chromium) as page:
        for _ in range(MUTATIONS):
            damaged = bytearray(bundle)
            damaged[rng.randrange(len(damaged))] ^= rng.randrange(1, 256)
            report = await check_bundle(page, bytes(damaged), headers=built.headers)
            cli = await estampille_verify(tmp_path, capsys, bytes(damaged), built.headers)
            assert report["status"] == cli["status"], (report["problem"], cli["problem"])
            verdicts.add(report["status"])
    assert "invalid" in verdicts


async def test_the_tracker_serves_the_page_at_verify_and_it_verifies_there(keys, tmp_path) -> None:
    chromium = require_tool("chromium")
    built = build_input(2, keys)
    config = relay_config(tmp_path / "data", 1, tracker={"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0,
                                                         "public_url": "http://127.0.0.1:1"})
    async with running(config) as service:
        url = f"http://127.0.0.1:{service.tracker.port}/verify"
        async with verify_page(chromium, url) as page:
            report = await check_bundle(page, built.bundle(), headers=built.headers)
            assert report["status"] == "verified", report.get("problem")
            assert page.requests == [url]  # the page only: no script, style or font from the tracker
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200 and response.content_type == "text/html"
            assert await response.read() == PAGE.read_bytes()
            assert "connect-src http: https:" in response.headers["Content-Security-Policy"]
            assert response.headers["X-Frame-Options"] == "DENY"


async def test_the_page_a_bundle_carries_verifies_that_bundle_from_file(keys, tmp_path) -> None:
    """Every bundle (from format 2) holds verify.html; unzipped and opened from file://, it verifies its bundle."""
    chromium = require_tool("chromium")
    built = build_input(2, keys)
    bundle = built.bundle()
    page_file = tmp_path / "verify.html"
    page_file.write_bytes(read_zip(bundle)[proof.VERIFY_PAGE])
    async with verify_page(chromium, page_file.as_uri()) as page:
        report = await check_bundle(page, bundle, headers=built.headers)
        assert report["status"] == "verified" and report["format_version"] == proof.FORMAT_VERSION, report.get("problem")
        assert "verify.html" in report["informative_only"]
        assert page.requests == [page_file.as_uri()]


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles"


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("v*.zip")))
async def test_the_page_gives_estampille_verifys_report_on_every_kept_bundle(name, tmp_path, capsys) -> None:
    """Every format's bundles (made through the real relay too): the same recipients, records,
    anchors and times as the command's JSON report, field by field."""
    chromium = require_tool("chromium")
    bundle = (FIXTURES / f"{name}.zip").read_bytes()
    headers_file = FIXTURES / f"{name.rsplit('-', 2)[0]}-{'relay' if 'relay' in name else 'synthetic'}-confirmed.headers"
    headers = parse_headers_file(headers_file.read_text())
    async with verify_page(chromium) as page:
        report = await check_bundle(page, bundle, headers=headers)
    cli = await estampille_verify(tmp_path, capsys, bundle, headers)
    assert report["status"] == cli["status"] != "invalid", (report.get("problem"), cli["problem"])
    for key in ("message_id", "subject", "received_at", "format_version", "scope", "recipients"):
        assert report[key] == cli[key], key
    # The page does not check RFC 3161 tokens (docs/verifying.md): the rest of each record is the same.
    assert report["records"] == [{k: v for k, v in r.items() if k != "tsa"} for r in cli["records"]]


async def test_a_receipt_anchored_twelve_days_after_its_claim_fails_unless_the_bound_is_loosened(keys) -> None:
    chromium = require_tool("chromium")
    built = build_input(2, keys, ack_at="2026-11-06T11:06:40.000000Z")  # 12 days before the block
    bundle = built.bundle()
    receipt = json.loads(read_zip(bundle)[MANIFEST])["facts"]["recipients"][0]["acknowledgment"]
    async with verify_page(chromium) as page:
        report = await check_bundle(page, bundle, headers=built.headers)
        assert (report["problem"]["file"], report["problem"]["check"]) == (receipt, "anchor delay")
        assert "288.0 h later, more than the 48 h allowed" in report["problem"]["detail"]
        assert (await check_states(page))["bound"][0] == "fail"
        report = await check_bundle(page, bundle, headers=built.headers, max_delay_hours=13 * 24)
        assert report["status"] == "verified", report["problem"]


# The scripted attestation is the one hostile bundle the page does not refuse: only the command
# regenerates attestation.html (docs/verifying.md); the page never renders the bundle's HTML.
@pytest.mark.parametrize("kind", sorted(set(HOSTILE) - {"scripted attestation"}))
async def test_a_hostile_bundle_is_refused_by_the_page_as_by_the_command(keys, kind) -> None:
    chromium = require_tool("chromium")
    built = build_input(2, keys)
    make, check = HOSTILE[kind]
    async with verify_page(chromium) as page:
        report = await check_bundle(page, make(read_zip(built.bundle())), headers=built.headers)
    assert report["status"] == "invalid" and report["problem"]["check"] == check, report["problem"]


async def test_hand_written_manifests_the_command_refuses_the_page_refuses(keys) -> None:
    """Facts removed or retyped, the checksum recomputed. Where the command verifies, the page does;
    where it refuses, the page refuses too, except for the facts only the attestation shows (the
    command renders it from them and compares; the page does not render it: docs/verifying.md)."""
    chromium = require_tool("chromium")
    built = build_input(3, keys)
    files = read_zip(built.bundle())
    manifest = json.loads(files[MANIFEST])
    rest = {p: d for p, d in files.items() if p != MANIFEST}
    listing = {p: (hashlib.sha256(d).hexdigest(), len(d)) for p, d in rest.items()}
    facts = manifest["facts"]
    variants = [{k: v for k, v in facts.items() if k != key} for key in facts]
    variants += [{**facts, key: value} for key in facts for value in (None, 7, "x", [], {})]
    first = facts["recipients"][0]
    variants += [{**facts, "recipients": [{k: v for k, v in first.items() if k != key}, *facts["recipients"][1:]]}
                 for key in first]
    variants += [{**facts, "recipients": [{**first, key: 7}, *facts["recipients"][1:]]} for key in first]
    differ, refused = [], 0
    async with verify_page(chromium) as page:
        for forged in variants:
            bundle = {MANIFEST: proof.make_manifest(forged, listing), **rest}
            cli = verify_files(bundle, built.headers, regtest=True).to_json()["status"]
            got = (await check_bundle(page, rezip(bundle), headers=built.headers))["status"]
            changed = {k for k in set(facts) | set(forged) if facts.get(k, "?") != forged.get(k, "?")}
            refused += got == "invalid"
            if got != cli and not (got == "verified" and changed <= {"anchoring", "generated_at", "subject", "timezone"}):
                differ.append((sorted(changed), str(forged.get(min(changed), "-"))[:40], got, cli))
    assert differ == [], "\n".join(map(repr, differ))
    assert refused > len(variants) // 2
