"""Reports to the bounce domain through the real intake: matched by their return path and
envelope id, refused when forged or early, and shown in the API's view, the webhook events
and the bundle, whose verifier checks each report's bytes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import aiosmtplib
import pytest

from relay.evidence.archive import read_zip
from relay.evidence.bundle import MANIFEST, make_manifest
from relay.evidence.bundle_check import verify_files
from relay.evidence.records import sha256_hex
from relay.outbound import verp
from relay.outbound.dsn import Failure, build_dsn
from relay.proof import gather
from tests.support.polling import until
from tests.support.proved import MESSAGE_ID, convocation
from tests.support.relay import relay_config, running
from tests.support.sink import Sink
from tracker.admin import TEXTS, timeline

BOUNCES = "bounces.ville.example"
MEMBER = "elu@conseil.example"
WHEN = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def report(recipient: str = MEMBER, envelope_id: str | None = None) -> bytes:
    data = build_dsn(
        reporting_mta="mx.fournisseur.example", sender="x@ville.example",
        failures=[Failure(recipient, "5.1.1", "550 5.1.1 no such member", f"rfc822;{recipient}")],
        original_headers=b"Subject: convocation\n", original_message_id=None, arrival=WHEN, now=WHEN,
        boundary="B", message_id="<r@fournisseur.example>",
    )
    if envelope_id is not None:
        data = data.replace(b"Reporting-MTA:", b"Original-Envelope-Id: " + envelope_id.encode() + b"\r\nReporting-MTA:")
    return data


async def send_report(port: int, path: str, data: bytes) -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    async with client:
        await client.mail("")
        await client.rcpt(path)
        try:
            reply = await client.data(data)
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
        return reply.code, reply.message


@pytest.fixture
async def relay(tmp_path):
    async with Sink() as sink:
        config = relay_config(tmp_path / "data", sink.port, dsn={"bounce_domain": BOUNCES},
                              webhooks={"urls": ["http://127.0.0.1:9/hook"], "secret": "s"})
        async with running(config) as service:
            await aiosmtplib.send(convocation([MEMBER]), sender="convocations@mairie.example", recipients=[MEMBER],
                                  hostname="127.0.0.1", port=service.smtp_port)
            (copy,) = await sink.wait_for(1)
            store = service.store
            await until(lambda: store.fetchone("SELECT 1 FROM deliveries WHERE state = 'delivered'"), "hand-off")
            yield service, copy.mail_from, sink


async def test_a_report_is_matched_by_its_return_path_and_envelope_id(relay):
    service, path, sink = relay
    token = verp.token_of(path, BOUNCES)
    assert token is not None
    port, store = service.smtp_port, service.store
    code, text = await send_report(port, path, report(envelope_id="0" * 32))
    assert code == 550 and "not about the message" in text  # another envelope's report, sent to this path
    assert await store.fetchone("SELECT 1 FROM delivery_reports") is None
    code, _ = await send_report(port, path, report(envelope_id=token))
    assert code == 250
    delivery = await store.fetchone("SELECT state, last_code, last_reply FROM deliveries")
    assert tuple(delivery) == ("failed", 550, "550 5.1.1 no such member")
    event = await store.fetchone("SELECT payload FROM webhook_events WHERE event = 'failed'")
    assert json.loads(event["payload"])["reported"] is True
    # The report came to the relay, not to the sender: the sender gets the relay's own notice, once.
    notice = (await sink.wait_for(2))[1]
    assert notice.mail_from == "" and notice.rcpt_tos == ("convocations@mairie.example",)
    assert b"550 5.1.1 no such member" in notice.data and b"Final-Recipient: rfc822; " + MEMBER.encode() in notice.data
    assert (await send_report(port, path, report(envelope_id=token)))[0] == 250  # the same failure again
    notices = await store.fetchone("SELECT COUNT(*) AS n FROM submissions WHERE kind = 'dsn'")
    assert notices["n"] == 1


async def test_a_report_before_its_hand_off_is_recorded_waits(relay):
    service, path, _ = relay
    store = service.store
    await store.write(lambda db: db.execute("UPDATE deliveries SET state = 'sending'"))
    code, _ = await send_report(service.smtp_port, path, report())
    assert code == 451  # the reporting MTA tries again later; the fact it follows is then recorded
    await store.write(lambda db: db.execute("UPDATE deliveries SET state = 'delivered'"))
    code, _ = await send_report(service.smtp_port, path, report())
    assert code == 250


async def test_reports_are_in_the_view_and_the_bundle_whose_verifier_checks_their_bytes(relay):
    service, path, _ = relay
    store = service.store
    assert (await send_report(service.smtp_port, path, report()))[0] == 250
    view = gather.message_json(await gather.load_message(store, MESSAGE_ID))
    (shown,) = view["recipients"][0]["reports"]
    assert shown["action"] == "failed" and shown["diagnostic"] == "550 5.1.1 no such member"
    assert shown["record"]["record"]["delivery"] == view["recipients"][0]["delivery"]["digest"]
    # The admin page's timeline says it in words (issue 27: "rejeté par le serveur du destinataire : 550 …").
    events = timeline(view, view["recipients"][0], TEXTS["fr"], "Europe/Paris", "fr")
    assert any(e["what"] == "Rejeté par le serveur du destinataire" and e["detail"] == "550 5.1.1 no such member"
               for e in events), events
    # Counted with the message's other records, in the list of messages too.
    listed = await store.message_digests([view["submission_id"]])
    assert shown["record"]["digest"] in {r.digest for r in listed} and view["summary"]["records"] == len(listed)
    out = io.BytesIO()
    await gather.build_proof(store, MESSAGE_ID, out, now=2e9, timezone="Europe/Paris")
    files = read_zip(out.getvalue())
    good = verify_files(files, {})
    assert good.problem is None and good.recipients[0].reports[0].startswith("failed (5.1.1)")
    assert "rejeté par le serveur du destinataire" in files["attestation.html"].decode()
    (name,) = [p for p in files if p.startswith("reports/")]
    tampered = dict(files, **{name: files[name].replace(b"5.1.1", b"2.0.0")})
    tampered = _with_manifest_of(tampered)
    bad = verify_files(tampered, {})
    assert bad.problem is not None and (bad.problem.path, bad.problem.check) == (name, "report digest")


def _with_manifest_of(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files with a manifest rewritten to match them, as a forger would."""
    manifest = json.loads(files[MANIFEST])
    listing = {p: (sha256_hex(d), len(d)) for p, d in files.items() if p != MANIFEST}
    return dict(files, **{MANIFEST: make_manifest(manifest["facts"], listing)})

