"""Meeting-date reader benchmark: precision and recall on French convocations.

    python bench/meeting_dates.py [--corpus FILE ...] [--show]

The corpora are tests/corpus/meeting-dates*.toml: the cases the reader was written against, and
three batches written afterwards and held out (their figures are printed apart). Each case is a subject, a text, the date the relay received it and the meeting
date a careful reader takes from it ("" when it cannot be told for sure). Precision is the share
of the dates the reader gives that are right; recall, the share of the meetings it finds. A
wrong date is worse than none (it makes a lawful convocation look late), so the goals are a
precision of 1.0 and a recall of at least 0.9.

Baseline, measured in the same run on the same cases: the first valid date written in the
subject, else in the text (what a quick regular expression would do).

Cost: intake reads each message of a sender under [law] (relay.law.meeting.Convocation.of). Timed
on a 9 KB convocation, against parsing the same bytes with the email package's default policy and
reading its Subject (what any look at a message costs).

The last line is: RESULT date_precision=… date_recall=… time_exact=… baseline_precision=… baseline_recall=…
read_ms=… read_vs_parse=…
"""

from __future__ import annotations

import argparse
import datetime as dt
import email
import sys
import time
import tomllib
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.config import LawConfig
from relay.law.dates import dates_written, find_meeting_date
from relay.law.meeting import Convocation

CORPORA = sorted((Path(__file__).resolve().parent.parent / "tests" / "corpus").glob("meeting-dates*.toml"))
Reader = Callable[[str, str, dt.date], str]


def ours(subject: str, text: str, today: dt.date) -> str:
    found = find_meeting_date(subject, text, today)
    return found.isoformat() if found else ""


def first_date(subject: str, text: str, today: dt.date) -> str:
    written = dates_written(subject, today) + dates_written(text, today)
    return written[0].isoformat() if written else ""


def score(reader: Reader, cases: list[dict], show: bool) -> tuple[float, float, float]:
    answered = right = exact = meetings = 0
    for case in cases:
        expected = case["expected"]
        got = reader(case["subject"], case["text"], dt.date.fromisoformat(case["received"]))
        meetings += bool(expected)
        if got:
            answered += 1
            if expected and got[:10] == expected[:10]:
                right += 1
                exact += got == expected
            elif show:
                print(f"  wrong: {got!r} for {expected!r}: {case['subject']!r} / {case['text'][:70]!r}")
        elif expected and show:
            print(f"  missed: {expected!r}: {case['subject']!r} / {case['text'][:70]!r}")
    precision = right / answered if answered else 1.0
    return precision, right / meetings if meetings else 1.0, exact / right if right else 1.0


def convocation_bytes() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mairie <convocations@mairie.example>"
    msg["Subject"] = "Convocation au conseil municipal"
    body = "Madame, Monsieur,\n\nLe conseil municipal se réunira le mardi 15 décembre 2026 à 18h30 en mairie.\n\n"
    msg.set_content(
        (body + "Point à l'ordre du jour : approbation des tarifs communaux et questions diverses.\n" * 100)[:9000]
    )
    return msg.as_bytes()


def timed(work: Callable[[], object], runs: int) -> float:
    started = time.perf_counter()
    for _ in range(runs):
        work()
    return (time.perf_counter() - started) / runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, nargs="+", default=CORPORA)
    parser.add_argument("--show", action="store_true", help="print each wrong or missed case")
    args = parser.parse_args(argv)
    cases = []
    for path in args.corpus:
        part = tomllib.loads(path.read_text(encoding="utf-8"))["case"]
        p, r, _ = score(ours, part, False)
        print(f"{path.name}: {len(part)} cases, reader precision {p:.3f}, recall {r:.3f}")
        cases.extend(part)
    print(f"all: {len(cases)} cases, {sum(bool(c['expected']) for c in cases)} with a meeting date")
    base_p, base_r, _ = score(first_date, cases, False)
    precision, recall, time_exact = score(ours, cases, args.show)
    data, config = convocation_bytes(), LawConfig(assembly="commune")
    received = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
    read_s = timed(lambda: Convocation.of(data, "convocations@mairie.example", received, config), 300)
    parse_s = timed(lambda: email.message_from_bytes(data, policy=policy.default)["Subject"], 300)
    print(f"reading a {len(data)}-octet convocation: {read_s * 1000:.2f} ms; parsing it: {parse_s * 1000:.2f} ms")
    print(f"baseline (first date written): precision {base_p:.3f}, recall {base_r:.3f}")
    print(f"reader: precision {precision:.3f}, recall {recall:.3f}, time exact on {time_exact:.3f} of the dates right")
    print(
        f"RESULT date_precision={precision:.3f} date_recall={recall:.3f} time_exact={time_exact:.3f}"
        f" baseline_precision={base_p:.3f} baseline_recall={base_r:.3f}"
        f" read_ms={read_s * 1000:.2f} read_vs_parse={read_s / parse_s:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
