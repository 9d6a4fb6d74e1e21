"""Browser verification benchmark: verify.html checks a 100-recipient bundle in headless chromium.

    python bench/verify_page_bench.py [--recipients 100] [--acks 25] [--runs 5]

The bundle is the proof model's synthetic one (``tests/support/proofdata.py``: every copy with
its two DKIM signatures, every record anchored in a regtest block); the page gets the block
header from two local Esplora-like explorers, as a user's page would from two public ones. Timed
from handing the page the file to its report on screen, ``--runs`` times (median reported).

Baseline, measured in the same run on the same bytes: ``relay.evidence.bundle_check.verify_files``,
what ``estampille verify`` runs (headers given, no network). Goal: the page under 3 s.

The last line is: RESULT page_verify_s=… python_verify_s=… page_over_python=… bundle_kb=…
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support: proofdata, verifypage

from relay.evidence.archive import read_zip
from relay.evidence.bundle_check import verify_files
from tests.support.proofdata import Keys, build_input
from tests.support.verifypage import check_bundle, explorers, verify_page


async def page_times(chromium: str, bundle: bytes, headers: dict[int, bytes], runs: int) -> list[float]:
    times = []
    async with explorers(headers) as bases, verify_page(chromium) as page:
        for _ in range(runs):
            started = time.perf_counter()
            report = await check_bundle(page, bundle, explorers=bases)
            times.append(time.perf_counter() - started)
            if report["status"] != "verified":
                raise SystemExit(f"the page did not verify the bundle: {report.get('problem')}")
    return times


def python_times(bundle: bytes, headers: dict[int, bytes], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        report = verify_files(read_zip(bundle), headers, regtest=True)
        times.append(time.perf_counter() - started)
        if report.status != "verified":
            raise SystemExit(f"estampille verify did not verify the bundle: {report.problem}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100)
    parser.add_argument("--acks", type=int, default=25)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (run .ci/system-packages)")
    built = build_input(args.recipients, Keys.generate(), acknowledged=args.acks)
    bundle = built.bundle()
    page_s = statistics.median(asyncio.run(page_times(chromium, bundle, built.headers, args.runs)))
    python_s = statistics.median(python_times(bundle, built.headers, args.runs))
    print(f"{args.recipients} recipients, {args.acks} acknowledged, bundle {len(bundle) / 1024:.0f} KiB")
    print(f"page (chromium, headers from 2 local explorers): {page_s:.3f} s (goal < 3 s)")
    print(f"estampille verify's checks (Python, headers given): {python_s:.3f} s; page/python {page_s / python_s:.2f}x")
    print(f"RESULT page_verify_s={page_s:.3f} python_verify_s={python_s:.3f} page_over_python={page_s / python_s:.2f} "
          f"bundle_kb={len(bundle) / 1024:.0f}")


if __name__ == "__main__":
    main()
