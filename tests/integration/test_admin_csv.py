"""The CSV of who has not acknowledged opens as it should in French Excel: ';' between
cells, French headers and states, the authority's local time, UTF-8 with a BOM; the
English form (',' and UTC, the API's states) behind ?lang=en."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiosmtplib
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.test_admin_api import login
from tests.integration.test_relay import message, wait_states
from tests.support.relay import relay_config, running
from tests.support.sink import Sink
from tracker.admin_auth import COOKIE, new_token
from tracker.app import make_app

DELIVERED, DEFERRED = "elu@example.net", "absente@example.net"


async def test_the_unacknowledged_csv_in_french_and_in_english(tmp_path):
    token, digest = new_token()
    async with Sink() as sink:
        sink.script(DEFERRED, ["451 4.2.0 boîte pleine; réessayez"])
        config = relay_config(tmp_path / "data", sink.port, admin={"token_hashes": [digest]},
                              tracker={"language": "browser"},
                              delivery={"retry_first": 3600.0, "retry_max": 3600.0})
        async with running(config) as service:
            await aiosmtplib.send(message(), sender="mairie@example.org", recipients=[DELIVERED, DEFERRED],
                                  hostname="127.0.0.1", port=service.smtp_port)
            await wait_states(service, "delivered", "deferred")
            client = TestClient(TestServer(make_app(config, service.store), host="127.0.0.1"))
            await client.start_server()
            try:
                sid, _ = await login(client, token)
                row = await service.store.fetchone("SELECT message_id FROM submissions")
                url = f"/admin/messages/{quote(row['message_id'], safe='')}/unacknowledged.csv"
                headers = {"Cookie": f"{COOKIE}={sid}"}
                french = await (await client.get(url, headers=headers)).read()
                english = await (await client.get(url + "?lang=en", headers=headers)).read()
                page = await (await client.get(url.removesuffix("/unacknowledged.csv"),
                                               headers={**headers, "Accept-Language": "en"})).text()
            finally:
                await client.close()

    assert french.startswith("\ufeff".encode()) and english.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(french.decode("utf-8-sig")), delimiter=";"))
    assert rows[0] == ["destinataire", "état", "dernière réponse", "remis le", "ouvertures du lien"]
    by_rcpt = {r[0]: r for r in rows[1:]}
    assert by_rcpt[DEFERRED][1:3] == ["différé", "451 4.2.0 boîte pleine; réessayez"]
    assert by_rcpt[DELIVERED][1] == "remis" and by_rcpt[DELIVERED][2].startswith("250")
    handed = datetime.strptime(by_rcpt[DELIVERED][3], "%d/%m/%Y %H:%M:%S")  # Paris wall-clock time

    rows = list(csv.reader(io.StringIO(english.decode("utf-8-sig"))))
    assert rows[0] == ["recipient", "state", "last_reply", "handed_at", "fetches"]
    by_rcpt = {r[0]: r for r in rows[1:]}
    assert by_rcpt[DEFERRED][1] == "deferred" and by_rcpt[DELIVERED][1] == "delivered"
    utc = datetime.fromisoformat(by_rcpt[DELIVERED][3])
    assert utc.astimezone(ZoneInfo("Europe/Paris")).replace(tzinfo=None, microsecond=0) == handed
    assert re.search(r"unacknowledged\.csv\?[^\"]*lang=en", page)  # the English admin page links the English form
