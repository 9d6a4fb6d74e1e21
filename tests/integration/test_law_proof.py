"""The convocation's deadline and register wording in the proof bundle's attestation, for a
message sent through the real relay and a meeting date an admin set through the API."""

from __future__ import annotations

import datetime as dt
import io
import time
from urllib.parse import quote

import aiohttp

from relay.evidence.archive import read_zip
from relay.law.deadline import paris_date
from relay.proof.gather import build_proof
from tests.support.proved import ACKNOWLEDGER, MESSAGE_ID, RECIPIENTS, proved_message


async def test_the_attestation_states_the_deadline_per_member_and_the_wording(tmp_path):
    async with proved_message(tmp_path, law={"assembly": "commune"}) as p:
        # Two days ahead of today in Paris: a commune owes 5 jours francs, so the convocation is late.
        meeting = paris_date(dt.datetime.now(dt.UTC)) + dt.timedelta(days=2)
        url = f"{p.base}/api/v1/messages/{quote(MESSAGE_ID, safe='')}/convocation"
        headers = {"Authorization": f"Bearer {p.token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.put(url, json={"meeting": meeting.isoformat(), "set_by": "DGS"}) as r,
        ):
            law = await r.json()
            assert r.status == 200, law
        assert law["status"] == "late"
        assert {m["recipient"]: m["delivered_in_time"] for m in law["members"]} == dict.fromkeys(RECIPIENTS, False)
        out = io.BytesIO()
        await build_proof(p.store, MESSAGE_ID, out, now=time.time(), timezone="Europe/Paris")
    attestation = read_zip(out.getvalue())["attestation.html"].decode()
    assert "<h2>Délai de convocation</h2>" in attestation
    assert "5 jour(s) franc(s) (article L. 2121-12 du CGCT)" in attestation
    assert '<span class="no">hors délai</span>' in attestation
    assert attestation.count('<td><span class="no">non</span></td>') >= len(RECIPIENTS)  # none delivered in time
    assert law["wording"] in attestation.replace("&#39;", "'")
    assert ACKNOWLEDGER in attestation
