"""Proof that a copy reached the member's server, from a real Postfix's own delivery status reports.

The relay hands each copy to a real Postfix (tests/support/postfix.py) with a return path of
its own and NOTIFY=SUCCESS,FAILURE,DELAY; Postfix relays to two "member servers" (aiosmtpd
sinks on loopback), one accepting, one refusing with 550, and sends its reports to the
bounce domain, routed to the relay's own intake. The first delivery ends 'delivered' with the
member server's reply, the second 'failed' with its 550; both reports are in the proof
bundle, which verifies against the local calendar's chain; the sender is told of the refusal.
"""

from __future__ import annotations

import asyncio
import io
import json
import os

import aiosmtplib
import pytest

from relay.anchor import worker as anchor
from relay.evidence.archive import read_zip
from relay.evidence.bundle_check import verify_files
from relay.outbound import verp
from relay.outbound.reports import parse_report
from relay.proof import gather
from tests.support import postfix
from tests.support.calendar import EsploraFake, FakeCalendar, FakeChain
from tests.support.polling import until
from tests.support.proved import convocation
from tests.support.relay import relay_config, running
from tests.support.sink import Sink, free_port

pytestmark = pytest.mark.external

ACCEPTED = "elu1@member1.test"
REFUSED = "elu2@member2.test"
BOUNCE_DOMAIN = "bounces.test"
REFUSAL = "550 5.1.1 <elu2@member2.test>: Recipient address rejected: no such member"
MESSAGE_ID = "<convocation-2026-12@mairie.example>"
DEADLINE = 90.0  # Postfix retries a report the relay answered 451 to after 1 to 2 s


def require_postfix() -> None:
    """Like require_tool (never a skip in CI), for /usr/sbin/postfix, which a user's PATH may lack."""
    if not postfix.available():
        message = ("Postfix as a fixture needs Debian's postfix package (run .ci/system-packages), root,"
                   " and the package's postfix user and postdrop group")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


async def test_postfix_reports_prove_what_the_member_servers_said(tmp_path):
    require_postfix()
    chain = FakeChain()
    replies: list[str] = []
    async with (FakeCalendar(chain) as calendar, EsploraFake(chain) as e1, EsploraFake(chain) as e2,
                Sink() as member1, Sink(refuse_rcpt={REFUSED: REFUSAL}) as member2, Sink() as sender):
        outbound_port = free_port()
        config = relay_config(
            tmp_path / "data", outbound_port, dsn={"bounce_domain": BOUNCE_DOMAIN},
            anchor={"enabled": False, "calendars": [calendar.url], "min_calendars": 1,
                    "esplora": [e1.url, e2.url], "regtest": True, "http_for_tests": True},
        )
        async with running(config) as service:
            assert service.intake is not None
            counted = service.intake.on_reply

            def on_reply(reply: str) -> None:  # every reply the intake gives, reports' included
                replies.append(reply)
                if counted is not None:
                    counted(reply)

            service.intake.on_reply = on_reply
            routes = {"member1.test": member1.port, "member2.test": member2.port, BOUNCE_DOMAIN: service.smtp_port,
                      "mairie.example": sender.port}
            async with postfix.Postfix(routes, port=outbound_port) as mta:
                store = service.store
                assert store is not None
                await aiosmtplib.send(convocation([ACCEPTED, REFUSED]), sender="convocations@mairie.example",
                                      recipients=[ACCEPTED, REFUSED], hostname="127.0.0.1", port=service.smtp_port)
                reports = await until(lambda: _final_reports(store), "both reports", timeout=DEADLINE)
                assert [r["recipient"] for r in reports] == [ACCEPTED, REFUSED], mta.log()
                # The refusal came to the relay, not to the sender: the sender gets the relay's notice.
                (notice,) = await sender.wait_for(1, timeout=DEADLINE)
                assert notice.rcpt_tos == ("convocations@mairie.example",) and REFUSAL[:9].encode() in notice.data
                await until(lambda: not mta.queued(), "Postfix's queue to empty", timeout=DEADLINE)
                log = mta.log()

            # The member servers saw each copy with its own return path, never the sender's.
            (copy1,) = member1.messages
            token1 = verp.token_of(copy1.mail_from, BOUNCE_DOMAIN)
            assert token1 is not None and member2.messages == []

            submission_id = (await store.fetchone("SELECT id FROM submissions WHERE kind = 'mail'"))["id"]
            states = {d.recipient: d for d in await store.delivery_states(submission_id)}
            ok, refused = states[ACCEPTED], states[REFUSED]
            assert ok.state == "delivered" and ok.last_code == 250, [dict(r) for r in reports]
            assert ok.last_reply.startswith("250 ") and "SINK" in ok.last_reply, [dict(r) for r in reports]
            assert refused.state == "failed" and refused.last_code == 550, refused
            assert REFUSAL[4:] in refused.last_reply
            by_rcpt = {r["recipient"]: r for r in reports}
            assert by_rcpt[ACCEPTED]["remote_mta"] == "127.0.0.1" and by_rcpt[REFUSED]["status"] == "5.1.1"

            # Nothing reached the bounce domain that was not a report: every reply the intake gave
            # to a report was a 250 or a 451 (the report came before its hand-off was recorded).
            assert all(r.startswith(("2", "3", "451")) for r in replies), replies
            assert "status=sent" in log and "bounces+" in log

            # Anchored, bundled, verified.
            await anchor.anchor_now(store, config.anchor)
            calendar.confirm()
            await anchor.anchor_now(store, config.anchor)
            tokens = {row["token"] for row in await store.fetchall("SELECT token FROM return_tokens")}
            out = io.BytesIO()
            await gather.build_proof(store, MESSAGE_ID, out, now=1e9 * 2, timezone="Europe/Paris")
        files = read_zip(out.getvalue())
        report_files = sorted(p for p in files if p.startswith("reports/"))
        assert len(report_files) == 2
        for path in report_files:
            parsed = parse_report(files[path])
            # ENVID, NOTIFY=SUCCESS and RET=HDRS reached Postfix: each report names its envelope, a
            # success was reported, and the failure returned the copy's headers, not its body.
            assert parsed.reporting_mta == "outbound.test" and parsed.envelope_id in tokens
            assert b"text/rfc822-headers" in files[path] and b"Mesdames" not in files[path]
        assert len(tokens) == 2
        manifest = json.loads(files["manifest.json"])
        entries = {r["recipient"]: r for r in manifest["facts"]["recipients"]}
        assert all(len(entries[r]["reports"]) == 1 for r in (ACCEPTED, REFUSED))
        result = await asyncio.to_thread(verify_files, files, dict(enumerate(chain.headers)), regtest=True)
        assert result.status == "verified", result.summary()
        summary = {r.recipient: r for r in result.recipients}
        assert summary[ACCEPTED].reports[0].startswith(("delivered (2.0.0)", "relayed (2.0.0)"))
        assert summary[REFUSED].reports[0].startswith("failed (5.1.1)") and "550 5.1.1" in summary[REFUSED].reports[0]


async def _final_reports(store) -> list | None:
    """The reports that settle each delivery (delivered, relayed or failed), once there are two."""
    rows = await store.fetchall(
        "SELECT r.*, d.recipient FROM delivery_reports r JOIN deliveries d ON d.id = r.delivery_id"
        " WHERE r.action IN ('delivered', 'relayed', 'failed') ORDER BY d.recipient")
    return rows if len(rows) >= 2 else None
