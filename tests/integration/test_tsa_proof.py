"""RFC 3161 tokens in proof bundles, end to end: the real relay with a local TSA (``openssl ts
-reply``) and a local calendar; the bundle verified by ``estampille verify`` and, for every
record, by the commands VERIFY.md gives (``openssl ts -verify``); tokens planted in a bundle."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import subprocess
import time
import zipfile
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from relay import cli
from relay.anchor.headers import AgreeingSources, EsploraSource, fetch_headers
from relay.config import TSAAuthority
from relay.evidence.bundle import MANIFEST, make_manifest
from relay.evidence.bundle_check import verify_files
from relay.evidence.records import sha256_hex
from relay.evidence.tsa_proof import root_of
from relay.evidence.tsa_verify import TokenRequest
from relay.proof.gather import build_proof
from tests.conftest import require_tool
from tests.support.openapi import assert_matches
from tests.support.proved import MESSAGE_ID, proved_message
from tests.support.tsa import LocalTSA, TSAPki
from tracker.admin_auth import COOKIE

pytestmark = pytest.mark.external  # openssl answers and checks every token


def authority(tsa: LocalTSA, pki: TSAPki) -> TSAAuthority:
    return TSAAuthority(name="Local TSA", url=tsa.url, ca_files=[str(pki.ca_pem)], qualified=True,
                        trust_list="EU Trusted List (test)")


@contextlib.asynccontextmanager
async def stamped(tmp_path: Path, **kw):
    """The relay with a TSA, the message anchored and confirmed: (p, bundle files, headers, tsa)."""
    require_tool("openssl")
    pki = TSAPki.make(tmp_path / "pki")
    async with LocalTSA(pki) as tsa, proved_message(tmp_path, tsa={"authorities": [authority(tsa, pki)]}, **kw) as p:
        await p.anchor()
        height = await p.confirm()
        out = io.BytesIO()
        await build_proof(p.store, MESSAGE_ID, out, now=time.time(), timezone=p.config.tracker.timezone)
        with zipfile.ZipFile(out) as zf:
            files = {name: zf.read(name) for name in zf.namelist()}
        headers = await fetch_headers(AgreeingSources(EsploraSource(u) for u in p.explorers), [height])
        (tmp_path / "bundle.zip").write_bytes(out.getvalue())
        yield p, files, headers, tsa


def verify_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["verify", *argv])
    return code, out.getvalue()


def replanted(files: dict[str, bytes], changes: dict[str, bytes]) -> dict[str, bytes]:
    """The bundle with ``changes`` and a manifest recomputed to match (what a forger does)."""
    out = {**files, **changes}
    facts = json.loads(files[MANIFEST])["facts"]
    listing = {path: (sha256_hex(data), len(data)) for path, data in out.items() if path != MANIFEST}
    out[MANIFEST] = make_manifest(facts, listing)
    return out


def root_preimage(leaf: dict) -> bytes:
    """The bytes whose SHA-256 is the record's batch root: the two nodes below it."""
    path = [(step, bytes.fromhex(sibling)) for step, sibling in leaf["path"]]
    record, nonce = bytes.fromhex(leaf["record"]), bytes.fromhex(leaf["nonce"])
    if not path:
        return record + nonce
    node = root_of(record, nonce, path[:-1])
    step, sibling = path[-1]
    return node + sibling if step == "append" else sibling + node


def verify_md_commands(files: dict[str, bytes]) -> str:
    """The sh block of VERIFY.md that checks a record's token with OpenSSL."""
    text = files["VERIFY.md"].decode()
    return re.search(r"```sh\n(LEAF=.*?)```", text, re.S).group(1)


async def test_every_record_has_a_token_that_estampille_and_openssl_verify(tmp_path):
    async with stamped(tmp_path) as (p, files, headers, tsa):
        code, out = await asyncio.to_thread(verify_cli, str(tmp_path / "bundle.zip"), "--regtest",
                                            "--esplora", p.explorers[0], "--esplora", p.explorers[1])
        requests = tsa.requests
    assert code == 0, out
    records = sorted(n for n in files if re.fullmatch(r"records/[a-z]+-[0-9a-f]{64}\.json", n))
    assert len(records) >= 9 and all(n + ".tsa.json" in files for n in records)
    assert requests == 1  # one batch, one token
    assert f"RFC 3161 tokens: {len(records)} of {len(records)} records, by Local TSA" in out
    assert "RFC 3161 token of Local TSA, declared qualified, EU Trusted List (test)" in out
    report = verify_files(files, headers, regtest=True)
    assert report.status == "verified"
    assert all(r.tsa is not None and r.tsa.signer == "C=FR,CN=Estampille Test TSA" for r in report.records)
    attestation = files["attestation.html"].decode()
    assert "Horodatage qualifié" in attestation and "Local TSA" in attestation and "oui (EU Trusted List" in attestation

    # A third party with OpenSSL only, following VERIFY.md, for every record.
    bundle_dir = tmp_path / "unpacked"
    with zipfile.ZipFile(tmp_path / "bundle.zip") as zf:
        zf.extractall(bundle_dir)
    script = verify_md_commands(files)
    for name in records:
        leaf = json.loads(files[name + ".tsa.json"])
        assert sha256_hex(files[name]) == leaf["record"]
        commands = re.sub(r"^LEAF=.*$", f"LEAF={name}.tsa.json", script, count=1, flags=re.M)
        done = await asyncio.to_thread(subprocess.run, ["bash", "-euc", commands], cwd=bundle_dir,
                                       capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Verification: OK" in done.stdout, done.stdout + done.stderr
        assert "Time stamp:" in done.stdout and "Policy OID: 1.3.6.1.4.1.99999.1" in done.stdout


async def test_a_token_planted_in_a_bundle_fails_naming_the_record(tmp_path):
    rogue = TSAPki.make(tmp_path / "rogue")
    async with stamped(tmp_path) as (p, files, headers, tsa), LocalTSA(rogue) as rogue_tsa:
        tsr_name = next(n for n in files if n.endswith(".tsr"))
        leaf = json.loads(next(data for n, data in files.items() if n.endswith(".tsa.json")))
        async with aiohttp.ClientSession() as session:
            async def token(url: str, preimage: bytes) -> bytes:
                request = TokenRequest.for_root(preimage)
                async with session.post(url, data=request.der,
                                        headers={"Content-Type": "application/timestamp-query"}) as r:
                    return await r.read()
            other_root = await token(tsa.url, b"another batch's root preimage")
            by_rogue = await token(rogue_tsa.url, root_preimage(leaf))  # the right root, a CA the bundle lacks
    tsr = files[tsr_name]
    plants = {
        "signature": {tsr_name: tsr[:-1] + bytes([tsr[-1] ^ 1])},
        "imprint": {tsr_name: other_root},
        "chain": {tsr_name: by_rogue},
    }
    records = [r.path for r in verify_files(files, headers, regtest=True).records]
    for fault, change in plants.items():
        report = verify_files(replanted(files, change), headers, regtest=True)
        assert report.exit_code == 2, fault
        assert report.problem.path == records[0] and report.problem.check == "RFC 3161 token", (fault, report.problem)
        if fault == "imprint":
            assert "imprint" in report.problem.detail
        if fault in ("signature", "chain"):
            assert "signature or chain" in report.problem.detail
    # A .tsa.json whose path leads elsewhere names its record too.
    leaf_name = records[1] + ".tsa.json"
    leaf = json.loads(files[leaf_name])
    leaf["nonce"] = "00" * 16
    bent = replanted(files, {leaf_name: json.dumps(leaf, sort_keys=True, separators=(",", ":")).encode()})
    report = verify_files(bent, headers, regtest=True)
    assert (report.problem.path, report.problem.check) == (records[1], "RFC 3161 token")
    assert "does not lead to the root" in report.problem.detail
    # Facts in the manifest (and so the attestation) that the tokens do not show are refused.
    manifest = json.loads(files[MANIFEST])
    manifest["facts"]["tsa"][records[0]]["qualified"] = False
    listing = {path: (sha256_hex(data), len(data)) for path, data in files.items() if path != MANIFEST}
    report = verify_files({**files, MANIFEST: make_manifest(manifest["facts"], listing)}, headers, regtest=True)
    assert (report.problem.path, report.problem.check) == (MANIFEST, "tsa")


async def test_a_record_stamped_ten_minutes_after_its_claim_fails_a_five_minute_bound(tmp_path):
    async with stamped(tmp_path, clock=lambda: time.time() - 600) as (p, files, headers, tsa):
        bounded = await asyncio.to_thread(verify_cli, str(tmp_path / "bundle.zip"), "--regtest", "--max-tsa-delay",
                                          "5m", "--esplora", p.explorers[0], "--esplora", p.explorers[1])
        loose = await asyncio.to_thread(verify_cli, str(tmp_path / "bundle.zip"), "--regtest", "--max-tsa-delay",
                                        "15m", "--esplora", p.explorers[0], "--esplora", p.explorers[1])
    code, out = bounded
    assert code == 2 and "RFC 3161 delay failed" in out and "--max-tsa-delay" in out, out
    assert re.search(r"INVALID: records/submission-[0-9a-f]{64}\.json: RFC 3161 delay", out), out
    assert loose[0] == 0, loose[1]



async def test_the_admin_page_and_the_api_show_each_records_token_and_bitcoin_anchor(tmp_path):
    require_tool("openssl")
    pki = TSAPki.make(tmp_path / "pki")
    async with LocalTSA(pki) as tsa, proved_message(
        tmp_path, tsa={"authorities": [authority(tsa, pki)], "retry_first": 0.0},
    ) as p, aiohttp.ClientSession() as session:
        api = f"{p.base}/api/v1/messages/{quote(MESSAGE_ID, safe='')}"
        page = p.base + "/admin/messages/" + quote(MESSAGE_ID, safe="")
        async with session.post(p.base + "/admin/login", data={"token": p.token}, allow_redirects=False) as r:
            cookie = {"Cookie": f"{COOKIE}={r.cookies[COOKIE].value}"}

        async def shown() -> tuple[list[dict], str]:
            async with session.get(api, headers={"Authorization": f"Bearer {p.token}"}) as r:
                view = await r.json()
            assert_matches("Message", view)
            records = [view["submission"]] + [x for r in view["recipients"]
                                              for x in (r["delivery"], r["handoff"], r["acknowledgment"]) if x]
            async with session.get(page, headers={**cookie, "Accept-Language": "fr"}) as r:
                return records, await r.text()

        tsa.down = True
        await p.anchor()
        records, html = await shown()
        assert {x["tsa"]["state"] for x in records} == {"waiting"}
        assert {x["anchoring"]["state"] for x in records} == {"pending"}
        assert "jeton RFC 3161 demandé, en attente · horodatage en attente de confirmation" in html
        tsa.down = False
        height = await p.confirm()  # the token's retry is due at once (retry_first 0), then the block
        records, html = await shown()
    assert all(x["tsa"]["state"] == "stamped" and x["tsa"]["tsa"] == "Local TSA" and x["tsa"]["qualified"]
               for x in records), records
    assert {x["anchoring"]["state"] for x in records} == {"confirmed"}
    assert re.search(rf"horodatage qualifié \(déclaré\) de Local TSA le [^<]+ · ancré dans Bitcoin, bloc {height}",
                     html), html
    assert "jeton RFC 3161 demandé" not in html
