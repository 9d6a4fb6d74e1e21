"""The web side under generated requests: Schemathesis against the admin API's own OpenAPI
document (with a valid Bearer token), and random tokens against the acknowledgment pages.

The relay runs in a thread (tests/support/threaded.py) with one delivered message, so
the API has something to show; Schemathesis sends real HTTP requests to it.
"""

from __future__ import annotations

import smtplib
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.relay import relay_config
from tests.support.threaded import ThreadedRelay
from tracker.admin_auth import new_token

API_EXAMPLES = 40
TOKEN_EXAMPLES = 150
TOKEN, TOKEN_HASH = new_token()
MESSAGE_ID = "<fuzz-1@ville.example>"


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    config = relay_config(
        tmp_path_factory.mktemp("fuzz-http"), upstream={"kind": "maildir"},
        tracker={"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0,
                 "public_url": "http://127.0.0.1:1"},
        admin={"token_hashes": [TOKEN_HASH]},
    )
    with ThreadedRelay(config) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.sendmail("mairie@ville.example", ["un@conseil.example", "deux@conseil.example"],
                            f"Subject: Convocation\r\nMessage-ID: {MESSAGE_ID}\r\n\r\nBonjour.\r\n".encode())
        deadline = time.monotonic() + 20
        query = "SELECT COUNT(*) AS n FROM deliveries WHERE state = 'delivered'"
        while relay.call(relay.service.store.fetchone(query))["n"] < 2:
            assert time.monotonic() < deadline, "the message was not delivered"
            time.sleep(0.05)
        yield relay


@pytest.fixture(scope="module")
def api_schema(relay):
    base = f"http://127.0.0.1:{relay.tracker_port}"
    request = urllib.request.Request(f"{base}/api/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        document = __import__("json").load(r)
    schema = schemathesis.openapi.from_dict(document)
    schema.config.base_url = base
    return schema


# Each operation of the document, its cases generated from its schema. (Not through
# schemathesis.pytest.from_fixture: with pytest 9 it reads a node attribute that is gone.)
def test_admin_api_answers_as_its_openapi_document_says(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 6
    for operation in operations:

        @settings(max_examples=API_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})

        check()


tokens = st.one_of(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=60),
    st.text(min_size=1, max_size=40),
    st.sampled_from(["..", "%00", "a" * 5000, "../../api/v1/messages", "%2e%2e%2f", "<script>", "a/b", "é"]),
)


@settings(max_examples=TOKEN_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=tokens, method=st.sampled_from(["GET", "POST", "HEAD"]))
def test_random_tokens_on_ack_pages_get_404_or_429_never_an_error(relay, token, method):
    url = f"http://127.0.0.1:{relay.tracker_port}/a/{urllib.parse.quote(token, safe='')}"
    data = b"form_key=00" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            status = r.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    assert status in (404, 429), (status, token)
