"""Crash test: 2,000 messages of 3 recipients sent to `estampille serve` while it is
SIGKILLed at five random moments and restarted (tests/support/crashrun.py).

    python bench/crash_test.py [--messages 2000] [--kills 5] [--clients 8] [--seed N]

Prints every problem found (a message accepted but not delivered to a recipient, a
copy without its records, a record not anchored), then
``RESULT messages=... accepted=... kills=... delivered_copies=... duplicates=... records=... anchored=... lost=...``.
Exit status 0 when nothing was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.crashrun import crash_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None, help="random seed of the kill moments (printed)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed={seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="estampille-crash-") as work:
        report = asyncio.run(crash_run(Path(work), messages=args.messages, kills=args.kills,
                                       clients=args.clients, seed=seed, deadline=1800.0))
    for problem in report.problems:
        print("PROBLEM", problem)
    print(f"send retries (connection refused or cut by a kill): {report.send_retries}")
    print(report.line())
    return 0 if not report.problems else 1


if __name__ == "__main__":
    sys.exit(main())
