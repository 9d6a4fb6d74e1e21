"""`estampille serve` at log level DEBUG, JSON lines: one line per SMTP transaction
and per delivery attempt carrying the submission id and the Message-ID, and never
the AUTH password, an acknowledgment token or a message body."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import signal
import smtplib
import ssl
import sys
from pathlib import Path

import aiohttp

from relay.cli import main
from tests.support.served import Relay, write_config
from tests.support.sink import Sink
from tests.support.tlscert import self_signed

PASSWORD = "Pw-9f3b1c-never-in-logs"
BODY_MARKER = "Body-7d2e4a-never-in-logs"
MESSAGE_ID = "<hygiene-1@mairie.example>"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
TRACKER = re.compile(rb"tracker listening on 127\.0\.0\.1:(\d+)")


def submit(port: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    data = (f"From: mairie@mairie.example\r\nTo: elu@example.net\r\nSubject: Convocation\r\n"
            f"Message-ID: {MESSAGE_ID}\r\n\r\n{BODY_MARKER}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.starttls(context=context)
        client.login("mairie", PASSWORD)
        client.sendmail("mairie@mairie.example", ["elu@example.net"], data)


async def test_debug_json_logs_name_the_message_and_hold_no_secret(tmp_path: Path):
    credentials = tmp_path / "credentials"
    saved, sys.stdin = sys.stdin, io.StringIO(PASSWORD + "\n")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["passwd", "mairie", "--file", str(credentials)]) == 0
    finally:
        sys.stdin = saved
    self_signed(tmp_path)
    async with Sink() as sink:
        config = write_config(
            tmp_path, sink.port,
            smtp=f'tls_cert = "cert.pem"\ntls_key = "key.pem"\ncredentials_file = "{credentials}"\n'
                 'allowed_networks = ["192.0.2.0/24"]',  # loopback must authenticate here
            extra='[log]\nlevel = "DEBUG"\nformat = "json"\n',
        )
        text = config.read_text().replace("[tracker]\nenabled = false", '[tracker]\nenabled = true\nlisten_port = 0')
        config.write_text(text)
        relay = await Relay.start(config)
        try:
            await asyncio.to_thread(submit, relay.port.result())
            (copy,) = await sink.wait_for(1)
            token = re.search(rb"/a/([A-Za-z0-9_-]{22,})", copy.data).group(1).decode()
            tracker_port = int(TRACKER.search(relay.log).group(1))
            async with aiohttp.ClientSession() as http:
                link = f"http://127.0.0.1:{tracker_port}/a/{token}"
                async with http.get(link, headers={"User-Agent": BROWSER}) as page:
                    form_key = re.search(r'name="form_key" value="([0-9a-f]+)"', await page.text()).group(1)
                async with http.post(link, data={"form_key": form_key}, headers={"User-Agent": BROWSER}) as done:
                    assert done.status == 200
        finally:
            relay.proc.send_signal(signal.SIGTERM)
            code = await relay.wait()
            relay.kill()
    assert code == 0
    lines = [json.loads(line) for line in relay.log.decode().splitlines()]  # every line is one JSON object
    messages = [line["message"] for line in lines]
    queued = [m for m in messages if m.startswith("queued ") and MESSAGE_ID in m]
    attempts = [m for m in messages if m.startswith("delivery ") and MESSAGE_ID in m]
    assert len(queued) == 1 and len(attempts) == 1
    submission_id = queued[0].split()[1]
    assert f" of {submission_id} " in attempts[0]
    auth_plain = base64.b64encode(f"\0mairie\0{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, auth_plain, token, BODY_MARKER, form_key):
        assert secret not in relay.log.decode(), f"{secret!r} is in the log"
