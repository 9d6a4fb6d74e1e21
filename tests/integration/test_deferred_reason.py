"""A delivery deferred because the upstream never answered says why, in the log and on the
admin page, as docs/admin.md promises ('deferred with the last reply')."""

from __future__ import annotations

import logging
from urllib.parse import quote

import aiosmtplib
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.test_admin_api import login
from tests.integration.test_relay import message, wait_states
from tests.support.relay import relay_config, running
from tests.support.sink import free_port
from tracker.admin_auth import COOKIE, new_token
from tracker.app import make_app


async def test_a_refused_connection_is_a_reason_in_the_log_and_on_the_admin_page(tmp_path, caplog):
    token, digest = new_token()
    closed = free_port()  # nothing listens there: every attempt is refused before any SMTP reply
    config = relay_config(tmp_path / "data", closed, admin={"token_hashes": [digest]},
                          delivery={"retry_first": 3600.0, "retry_max": 3600.0})
    caplog.set_level(logging.INFO, logger="estampille.deliver")
    async with running(config) as service:
        await aiosmtplib.send(message(), sender="mairie@example.org", recipients=["elu@example.net"],
                              hostname="127.0.0.1", port=service.smtp_port)
        await wait_states(service, "deferred")
        (line,) = [r.getMessage() for r in caplog.records if ": deferred (" in r.getMessage()]
        assert "(None " not in line and "deferred (no answer: " in line, line

        client = TestClient(TestServer(make_app(config, service.store), host="127.0.0.1"))
        await client.start_server()
        try:
            sid, _ = await login(client, token)
            row = await service.store.fetchone("SELECT message_id FROM submissions")
            r = await client.get(f"/admin/messages/{quote(row['message_id'], safe='')}",
                                 headers={"Cookie": f"{COOKIE}={sid}"})
            page = await r.text()
        finally:
            await client.close()
    reason = line.split("deferred (no answer: ", 1)[1].split(")")[0][:30]
    assert r.status == 200 and 'class="reason"' in page and reason in page, (reason, page)
