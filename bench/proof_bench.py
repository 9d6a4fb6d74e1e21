"""Proof benchmark: build and verify the proof bundle of a message with 100 recipients.

    python bench/proof_bench.py [--recipients 100] [--acks 25] [--runs 5]

The message goes through the real relay (SMTP intake, certify with both DKIM
signatures, delivery to a local sink, tracker); ``--acks`` recipients
acknowledge through the page's POST; every record is anchored on a local
calendar, then confirmed by a block of a fake chain, and stamped with an RFC 3161 token by a
local TSA (``openssl ts -reply``, tests/support/tsa.py). Then, each timed
``--runs`` times (median reported):

- build: ``relay.proof.gather.build_proof``: every row and record read from the
  store, each record's .ots and token path exported, the bundle assembled and zipped;
- verify: ``relay.proof.gather.verify_bundle``: the zip read, the manifest, the
  record chain, every copy's digest and its two DKIM signatures, every .ots
  replayed to a block header fetched from two agreeing Esplora fakes, every record's path
  to its batch's token and the token's signature and chain.

Baselines, measured in the same run on the same bytes: zipping the bundle's
files as they are (no store, no checks), and unzipping them with a SHA-256 of
each (integrity only). Goal: build and verify under 1 s each.

The last line is: RESULT build_s=… verify_s=… build_baseline_s=… verify_baseline_s=… bundle_kb=…
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support: relay, sink, calendar

from relay.anchor.headers import AgreeingSources, EsploraSource
from relay.config import TSAAuthority
from relay.evidence.archive import read_zip
from relay.proof.gather import build_proof, verify_bundle
from tests.support.proved import MESSAGE_ID, proved_message
from tests.support.tsa import LocalTSA, TSAPki


def baseline_zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def baseline_unzip(data: bytes) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return sum(len(hashlib.sha256(zf.read(name)).hexdigest()) for name in zf.namelist())


async def timed(runs: int, job) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = await job()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


async def bench(recipients: int, acks: int, runs: int) -> None:
    rcpts = [f"membre{i:03d}@conseil.example" for i in range(recipients)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        setup = time.perf_counter()
        pki = TSAPki.make(tmp_path / "pki")
        async with LocalTSA(pki) as tsa, proved_message(
            tmp_path, recipients=rcpts, acknowledgers=tuple(rcpts[:acks]),
            tsa={"authorities": [TSAAuthority(name="local", url=tsa.url, ca_files=[str(pki.ca_pem)])]},
        ) as p:
            await p.anchor()
            height = await p.confirm()
            print(f"setup: {recipients} recipients delivered, {acks} acknowledged, anchored at block {height} "
                  f"in {time.perf_counter() - setup:.1f} s")
            tz = p.config.tracker.timezone
            out = io.BytesIO()

            async def build() -> bytes:
                out.seek(0)
                out.truncate()
                await build_proof(p.store, MESSAGE_ID, out, now=time.time(), timezone=tz)
                return out.getvalue()

            build_s, bundle = await timed(runs, build)
            path = tmp_path / "bundle.zip"
            path.write_bytes(bundle)
            source = AgreeingSources(EsploraSource(url) for url in p.explorers)
            verify_s, report = await timed(runs, lambda: verify_bundle(path, source, regtest=True))
            assert report.status == "verified", report.summary()
            assert all(r.tsa is not None for r in report.records), "a record without its token"
            files = read_zip(bundle)
            build_base = (await timed(runs, lambda: asyncio.to_thread(baseline_zip, files)))[0]
            verify_base = (await timed(runs, lambda: asyncio.to_thread(baseline_unzip, bundle)))[0]
    print(f"bundle: {len(files)} files, {len(bundle) / 1024:.0f} KB, {len(report.records)} records, "
          f"{sum(len(r.dkim) for r in report.recipients)} DKIM signatures checked")
    print(f"build:  {build_s:.3f} s (baseline zip of the same files: {build_base:.3f} s, "
          f"x{build_s / build_base:.1f})")
    print(f"verify: {verify_s:.3f} s (baseline unzip + SHA-256: {verify_base:.3f} s, x{verify_s / verify_base:.1f})")
    print(f"goal: under 1 s each: build {'met' if build_s < 1 else 'MISSED'}, verify {'met' if verify_s < 1 else 'MISSED'}")
    print(f"RESULT build_s={build_s:.3f} verify_s={verify_s:.3f} build_baseline_s={build_base:.3f} "
          f"verify_baseline_s={verify_base:.3f} bundle_kb={len(bundle) / 1024:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=100)
    parser.add_argument("--acks", type=int, default=25)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(bench(args.recipients, args.acks, args.runs))


if __name__ == "__main__":
    main()
