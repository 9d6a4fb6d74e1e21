"""Random SMTP command streams against the intake (Hypothesis, a bounded number of examples).

The relay runs on its own loop in a thread; each example opens a raw connection, writes
a generated stream (verbs in any order, junk arguments, NUL, bare CR and LF, long
lines, pipelined DATA, AUTH exchanges, STARTTLS without TLS), ends any DATA and quits.
Every reply is a well-formed SMTP reply that shows no exception text, the relay logs no
error of its own, and after every example a normal transaction still gets its 250.
"""

from __future__ import annotations

import logging
import re
import smtplib
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.smtp.intake import ACCEPTED_PARAMS, _take_dsn_params
from tests.support.relay import relay_config
from tests.support.threaded import ThreadedRelay

EXAMPLES = 100
READ_SECONDS = 10.0
REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -]")
VERBS = [b"HELO", b"EHLO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"VRFY", b"EXPN", b"HELP",
         b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH CRAM-MD5", b"STARTTLS", b"BDAT 10", b"ETRN", b"QUIT", b"XYZZY", b""]
ARGS = [b"", b" <a@example.org>", b"<>", b" <b@example.net> NOTIFY=SUCCESS ORCPT=rfc822;b@example.net",
        b" <a@example.org> SIZE=99999999999 BODY=8BITMIME SMTPUTF8 AUTH=<> RET=HDRS ENVID=x",
        b" <\xc3\xa9l\xc3\xa9@exemple.fr>", b" <a@[127.0.0.1]>", b" <@route:a@b>", b" " + b"A" * 5000,
        b" AGFsaWNlAHdyb25n", b" =", b" *", b"\x00", b"\r", b" relay.test"]
line = st.one_of(
    st.builds(lambda v, a: v + a, st.sampled_from(VERBS), st.sampled_from(ARGS)),
    st.binary(max_size=200),
    st.sampled_from([b".", b"..", b"\n.\n", b"\r.\r", b"Subject: x", b"", b"\x00\x00", b"\xff" * 3000]),
)
streams = st.lists(st.tuples(line, st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n"])), min_size=1, max_size=25)


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    config = relay_config(tmp_path_factory.mktemp("fuzz-smtp"), upstream={"kind": "maildir"},
                          smtp={"timeout": 5})
    errors = ErrorLog()
    logging.getLogger("estampille").addHandler(errors)
    try:
        with ThreadedRelay(config) as relay:
            relay.errors = errors
            yield relay
    finally:
        logging.getLogger("estampille").removeHandler(errors)


def converse(port: int, stream: bytes) -> bytes:
    """Write ``stream`` then end any DATA and QUIT; everything the relay answered until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_SECONDS) as sock:
        sock.sendall(stream + b"\r\n.\r\nQUIT\r\n")
        received = b""
        deadline = time.monotonic() + READ_SECONDS
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


def normal_transaction(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=READ_SECONDS) as client:
        client.ehlo("client.test")
        client.mail("mairie@ville.example")
        client.rcpt("elu@conseil.example")
        return client.data(b"Subject: apres le bruit\r\n\r\nBonjour.\r\n")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
@given(stream=streams)
def test_random_command_streams_leave_the_intake_up_and_answering(relay, stream):
    data = b"".join(text + ending for text, ending in stream)
    received = converse(relay.port, data)
    lines = [ln for ln in received.split(b"\r\n") if ln]
    assert lines and lines[0].startswith(b"220 "), received[:200]
    assert all(REPLY_LINE.match(ln) for ln in lines), received[:500]
    assert not re.search(rb"Traceback|Exception|\w+Error\b", received), received[:500]
    code, text = normal_transaction(relay.port)
    assert code == 250, text
    assert not relay.errors.records, [r.getMessage() for r in relay.errors.records]


# -- the intake's reading of MAIL and RCPT parameters -----------------------------

PATH_ALPHABET = "ab9.@<>[]() \"\\\t-+=;:,é"
paths = st.one_of(
    st.text(alphabet=PATH_ALPHABET.translate({ord(c): None for c in "< \t"}), min_size=1, max_size=30),
    st.builds(lambda local, domain: f"<{local}@{domain}>", st.text(alphabet="ab9.-+_'", min_size=1, max_size=12),
              st.text(alphabet="ab9.-", min_size=1, max_size=12)),
    st.just("<>"),
    st.text(alphabet=PATH_ALPHABET.replace(">", ""), max_size=30).map(lambda inside: f"<{inside}>"),
)
PARAMS = ["SIZE=100", "NOTIFY=NEVER", "ORCPT=rfc822;x@y", "BODY=8BITMIME", "AUTH=<>", "auth=<a@b>", "RET=HDRS",
          "ENVID=x", "SMTPUTF8", "NOTIFYX=1", "(comment)"]


@settings(max_examples=3000, deadline=None)
@given(keyword=st.sampled_from(["FROM:", "TO:", "FROM: "]), path=paths,
       params=st.lists(st.tuples(st.sampled_from([" ", "  ", "\t"]), st.sampled_from(PARAMS)), max_size=5))
def test_the_intake_takes_out_only_the_dsn_and_auth_parameters(keyword: str, path: str, params):
    """aiosmtpd answers 555 to AUTH, RET, ENVID, NOTIFY and ORCPT: the intake hands it the
    command without them, whatever the path, and keeps them (upper-cased, in order) for the hooks."""
    arg = keyword + path + "".join(space + param for space, param in params)
    taken, rest = _take_dsn_params(arg)
    dsn = [p for _, p in params if p.split("=")[0].upper() in ACCEPTED_PARAMS]
    assert taken == [p.upper() for p in dsn]
    assert rest == keyword + path + "".join(space + p for space, p in params if p not in dsn)


@pytest.mark.parametrize("path", ["<", "<a@", '<"', "<@", '.a@\t["', "-@[=.,,=", 'b@[a9;"b-+,'])
def test_a_path_the_email_parser_chokes_on_is_a_syntax_error(relay, path):
    """aiosmtpd alone raised IndexError, AttributeError or UnboundLocalError here: a 451 (try
    again later) and an error in the log."""
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=READ_SECONDS) as client:
        client.ehlo("client.test")
        assert client.docmd(f"MAIL FROM:{path}")[0] == 553
        assert client.docmd("MAIL FROM:<mairie@ville.example>")[0] == 250
        assert client.docmd(f"RCPT TO:{path}")[0] == 553
    assert not relay.errors.records, [r.getMessage() for r in relay.errors.records]
