"""Convocation law in the API and on the admin pages, over a real aiohttp server: the register
view, setting and correcting the meeting date (an anchored evidence record each time), the
upcoming meetings."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay.config import Config
from relay.evidence.records import Record
from relay.store import Store
from tests.integration.test_admin_api import RECIPIENT, SUBJECT, T0, bearer, login
from tests.support.deliveries import make_delivery
from tests.support.openapi import assert_matches
from tracker.admin_auth import COOKIE, new_token
from tracker.app import make_app

# T0 is Sunday 29 November 2026, 06:33 in Paris. A commune owes 5 jours francs: a meeting on
# Friday 4 December needed the convocation by the 28th (late); on Saturday 5 December, by the 29th.
LATE_MEETING, ON_TIME_MEETING = "2026-12-04T18:30", "2026-12-05"


@pytest.fixture
async def env(tmp_path):
    token, digest = new_token()
    store = await Store.open(tmp_path)
    store.webhook_urls = ("http://127.0.0.1:9/hook",)  # events are queued, never sent: no worker runs
    await make_delivery(store, now=T0, subject=SUBJECT, recipient=RECIPIENT)
    row = await store.fetchone("SELECT id, message_id FROM submissions")
    config = Config.from_toml(
        f'data_dir = "{tmp_path}"\n[tracker]\npublic_url = "https://accuse.commune.example"\n'
        f'[admin]\ntoken_hashes = ["{digest}"]\n[law]\nassembly = "commune"\n'
    )
    app = make_app(config, store, clock=lambda: T0 + 60)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    path = f"/api/v1/messages/{quote(row['message_id'], safe='')}/convocation"
    yield {
        "client": client,
        "token": token,
        "message_id": row["message_id"],
        "submission_id": row["id"],
        "store": store,
        "path": path,
    }
    await client.close()
    await store.close()


async def meeting_records(store: Store) -> list[dict]:
    rows = await store.fetchall(
        "SELECT r.body, l.record_id AS leaf FROM records r LEFT JOIN anchor_leaves l ON l.record_id = r.id"
        " WHERE r.type = 'meeting_date' ORDER BY r.id"
    )
    assert all(r["leaf"] is not None for r in rows)  # queued for anchoring like every record
    return [Record.from_bytes(r["body"]).fields for r in rows]


async def test_a_message_without_a_known_meeting(env):
    r = await env["client"].get(env["path"], headers=bearer(env["token"]))
    law = await r.json()
    assert r.status == 200
    assert_matches("Convocation", law)
    assert (law["status"], law["meeting"], law["assembly"], law["deadline"]) == ("unknown", None, "commune", None)
    assert "La date de la séance n'étant pas connue du relais" in law["wording"]


async def test_setting_and_correcting_the_meeting_through_the_api(env):
    c, store = env["client"], env["store"]
    r = await c.put(
        env["path"], json={"meeting": LATE_MEETING, "set_by": "Secrétaire de mairie"}, headers=bearer(env["token"])
    )
    law = await r.json()
    assert r.status == 200, law
    assert_matches("Convocation", law)
    assert law["meeting"] == {"date": "2026-12-04", "time": "18:30", "source": "admin"}
    assert law["status"] == "late" and law["deadline"]["latest_sending_date"] == "2026-11-28"
    assert law["full_days_before_meeting"] == 4
    assert "alors que le délai légal est de 5 jours francs" in law["wording"]
    assert law["members"] == [
        {
            "recipient": RECIPIENT,
            "delivered_at": None,
            "acknowledged_at": None,
            "delivered_in_time": None,
            "acknowledged_in_time": None,
            "reminders": [],
        }
    ]
    r = await c.put(
        env["path"],
        json={"meeting": ON_TIME_MEETING, "urgent": False, "set_by": "Le maire"},
        headers=bearer(env["token"]),
    )
    law = await r.json()
    assert law["status"] == "on_time" and law["meeting"]["time"] is None
    first, second = await meeting_records(store)
    assert first["old"] == {"meeting": None, "source": None, "urgent": False, "installation": False}
    assert first["new"] == {"meeting": LATE_MEETING, "source": "admin", "urgent": False, "installation": False}
    assert (first["set_by"], first["via"]) == ("Secrétaire de mairie", "api")
    assert second["old"] == first["new"] and second["new"]["meeting"] == ON_TIME_MEETING
    submission = await store.fetchone("SELECT record_digest FROM submissions")
    assert first["submission"] == submission["record_digest"] and second["set_at"] == "2026-11-29T05:34:20.000000Z"
    # The first setting made it late: one convocation.late event, in the same transaction.
    events = await store.fetchall("SELECT payload FROM webhook_events WHERE event = 'convocation.late'")
    assert [json.loads(e["payload"])["meeting"] for e in events] == [LATE_MEETING]


@pytest.mark.parametrize(
    "body",
    [
        {"meeting": "04/12/2026", "set_by": "x"},
        {"meeting": "2026-12-04"},
        {"meeting": "2026-12-04", "set_by": "  "},
        {"meeting": "2026-12-04", "set_by": "x", "urgent": "oui"},
        {"meeting": 20261204, "set_by": "x"},
        ["2026-12-04"],
    ],
)
async def test_a_bad_setting_is_400_and_stores_nothing(env, body):
    r = await env["client"].put(env["path"], json=body, headers=bearer(env["token"]))
    assert r.status == 400
    assert_matches("Error", await r.json())
    assert await meeting_records(env["store"]) == []
    assert await env["store"].fetchone("SELECT 1 FROM convocations") is None


async def test_the_admin_page_shows_the_badge_and_the_wording_and_sets_the_date(env):
    c = env["client"]
    sid, _ = await login(c, env["token"])
    headers = {"Cookie": f"{COOKIE}={sid}"}
    page_path = f"/admin/messages/{quote(env['message_id'], safe='')}"
    page = await (await c.get(page_path, headers=headers)).text()
    assert 'id="law-status">Délai non vérifié' in page
    r = await c.post(
        f"{page_path}/convocation",
        data={"meeting": LATE_MEETING, "set_by": "Secrétaire"},
        headers=headers,
        allow_redirects=False,
    )
    assert r.status == 303 and r.headers["Location"].endswith("#convocation") and "law=bad" not in r.headers["Location"]
    page = await (await c.get(page_path, headers=headers)).text()
    assert 'class="state badge-late" id="law-status">Hors délai' in page
    assert "vendredi 4 décembre 2026 à 18 h 30 (fixée par un administrateur)" in page
    assert "envoi au plus tard le samedi 28 novembre 2026" in page
    assert "Le dimanche 29 novembre 2026 à 6 h 33, la convocation à la séance du vendredi 4 décembre 2026" in page
    (record,) = await meeting_records(env["store"])
    assert (record["via"], record["set_by"]) == ("admin", "Secrétaire")
    r = await c.post(
        f"{page_path}/convocation",
        data={"meeting": "demain", "set_by": "Secrétaire"},
        headers=headers,
        allow_redirects=False,
    )
    assert r.status == 303 and "law=bad" in r.headers["Location"]
    assert len(await meeting_records(env["store"])) == 1


async def test_upcoming_meetings(env):
    c = env["client"]
    sid, _ = await login(c, env["token"])
    headers = {"Cookie": f"{COOKIE}={sid}"}
    page = await (await c.get("/admin/meetings", headers=headers)).text()
    assert "Aucune séance connue dans les 30 prochains jours." in page
    await c.put(env["path"], json={"meeting": ON_TIME_MEETING, "set_by": "x"}, headers=bearer(env["token"]))
    page = await (await c.get("/admin/meetings", headers=headers)).text()
    assert SUBJECT in page and "samedi 5 décembre 2026" in page and "Dans les délais" in page
    assert RECIPIENT in page  # not acknowledged: at risk
    assert "0 / 1" in page
    await c.put(env["path"], json={"meeting": "2027-01-15", "set_by": "x"}, headers=bearer(env["token"]))
    page = await (await c.get("/admin/meetings", headers=headers)).text()
    assert SUBJECT not in page  # 47 days ahead: not in the next 30


async def test_an_installation_meeting_is_owed_three_jours_francs(env):
    # Wednesday 2 December: 5 jours francs would have needed the 26th, 3 need the 28th (late either way);
    # Thursday 3 December: the 29th would do for 3, not for 5.
    r = await env["client"].put(
        env["path"], json={"meeting": "2026-12-03", "installation": True, "set_by": "x"}, headers=bearer(env["token"])
    )
    law = await r.json()
    assert_matches("Convocation", law)
    assert law["installation"] and law["status"] == "on_time"
    assert law["deadline"] == {"jours_francs": 3, "latest_sending_date": "2026-11-29", "article": "L. 2121-7"}
    assert "(article L. 2121-7 du code général des collectivités territoriales)" in law["wording"]
    r = await env["client"].put(
        env["path"], json={"meeting": "2026-12-03", "set_by": "x"}, headers=bearer(env["token"])
    )
    assert (await r.json())["status"] == "late"
    (_, second) = await meeting_records(env["store"])
    assert second["old"]["installation"] is True and second["new"]["installation"] is False
