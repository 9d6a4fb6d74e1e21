"""SIGKILL at five random moments while 200 messages of 3 recipients are sent (bench/crash_test.py: 2,000).

Every message that got a 250 reaches every recipient at least once, every copy the
upstream received is the stored copy with its delivery and hand-off records, and
every evidence record ends anchored in a (fake) Bitcoin block.
"""

from __future__ import annotations

from tests.support.crashrun import crash_run

MESSAGES = 200


async def test_sigkill_five_times_loses_nothing(tmp_path):
    report = await crash_run(tmp_path, messages=MESSAGES, kills=5, seed=20261129)
    print(report.line())
    assert report.problems == []
    assert report.kills == 5 and report.accepted == MESSAGES
    # submission + (delivery + hand-off) per copy at least; every one anchored
    assert report.records >= MESSAGES * 7 and report.anchored == report.records
