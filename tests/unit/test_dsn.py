"""relay.outbound.dsn: RFC 3464 reports."""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser

from relay.outbound.dsn import Failure, build_dsn, status_of

WHEN = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def report(**kw) -> bytes:
    args = dict(
        reporting_mta="relay.example.org", sender="mairie@example.org",
        failures=[Failure("elu@example.net", "5.1.1", "550 5.1.1 no such user\r\nInjected: header", "rfc822;elu@x")],
        original_headers=b"From: mairie@example.org\nSubject: Convocation\n",
        original_message_id="<conv@example.org>", arrival=WHEN, now=WHEN, boundary="BOUNDARY",
        message_id="<dsn1@relay.example.org>",
    )
    args.update(kw)
    return build_dsn(**args)


def test_structure_is_multipart_report():
    msg = BytesParser(policy=policy.default).parsebytes(report())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "mairie@example.org"
    assert msg["In-Reply-To"] == "<conv@example.org>"
    human, status, headers = msg.iter_parts()
    assert "elu@example.net" in human.get_content()
    text = status.as_bytes().decode()
    for line in ("Reporting-MTA: dns; relay.example.org", "Original-Recipient: rfc822;elu@x",
                 "Final-Recipient: rfc822; elu@example.net", "Action: failed", "Status: 5.1.1"):
        assert line in text
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: Convocation" in headers.as_bytes().decode()
    assert b"\r\nSubject: Convocation\r\n\r\n--BOUNDARY--\r\n" in report()


def test_peer_text_cannot_inject_lines():
    data = report()
    assert b"\r\nInjected: header" not in data
    assert b"Diagnostic-Code: smtp; 550 5.1.1 no such user Injected: header\r\n" in data


def test_every_line_ends_in_crlf():
    data = report()
    assert data.count(b"\n") == data.count(b"\r\n")


def test_status_codes():
    assert status_of(550, "5.1.1 no such user", expired=False) == "5.1.1"
    assert status_of(554, "transaction failed", expired=False) == "5.0.0"
    assert status_of(451, "4.3.0 later", expired=True) == "4.4.7"
    assert status_of(None, "connection refused", expired=True) == "4.4.7"
