"""relay.certify.message: facts about received bytes."""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from pathlib import Path

from relay.certify.message import header_block, read_facts, read_header_facts, to_crlf

PDF = b"%PDF-1.4 convocation\x00\xff" * 50


def convocation() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mairie <mairie@example.org>"
    msg["To"] = "elu@example.net"
    msg["Subject"] = "Convocation au conseil municipal du 9 mars – ordre du jour"
    msg["Date"] = "Mon, 02 Mar 2026 10:00:00 +0100"
    msg["Message-ID"] = "<conv-2026-03@example.org>"
    msg.set_content("Bonjour,\nvous êtes convoqué.\n")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="ordre du jour.pdf")
    msg.add_attachment("a;b\n1;2\n", subtype="csv", filename="votes.csv")
    return msg.as_bytes()


def test_headers_are_read_and_decoded():
    facts = read_facts(convocation())
    assert facts.message_id == "<conv-2026-03@example.org>"
    assert facts.subject == "Convocation au conseil municipal du 9 mars – ordre du jour"
    assert facts.date == "Mon, 02 Mar 2026 10:00:00 +0100"


def test_attachments_are_hashed_after_decoding():
    facts = read_facts(convocation())
    assert facts.attachment_dicts() == [
        {"filename": "ordre du jour.pdf", "content_type": "application/pdf", "sha256": hashlib.sha256(PDF).hexdigest()},
        {"filename": "votes.csv", "content_type": "text/csv", "sha256": hashlib.sha256(b"a;b\n1;2\n").hexdigest()},
    ]


def test_encoded_word_subject_is_decoded():
    data = b"Subject: =?utf-8?q?R=C3=A9union_du_bureau?=\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n"
    assert read_header_facts(data).subject == "Réunion du bureau"
    assert read_facts(data).attachments == ()


def test_missing_and_malformed_headers_do_not_raise():
    facts = read_facts(b"Subject: =?bogus?x?zz?=\r\nDate: not a date\r\n\r\nno message id\r\n")
    assert facts.message_id is None
    assert facts.date == "not a date"
    assert facts.subject is not None
    assert read_facts(b"").message_id is None
    assert read_facts(b"\xff\xfe garbage without headers").attachments == ()


def test_header_block_and_crlf():
    assert header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n") == b"A: 1\r\nB: 2\r\n"
    assert header_block(b"A: 1\nB: 2\n\nbody\n") == b"A: 1\nB: 2\n"
    assert to_crlf(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd"


def test_single_part_attachment_is_found():
    data = (b"Subject: x\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n")
    (only,) = read_facts(data).attachments
    assert only.filename == "a.pdf" and only.sha256 == hashlib.sha256(b"%PDF-").hexdigest()


def test_facts_are_the_email_packages_own_on_the_whole_corpus(monkeypatch):
    """read_facts keeps one header class per name (the email package makes one per header
    read): on every corpus message, the facts are those the stock default policy gives."""
    from email import policy
    from email.parser import BytesParser

    from relay.certify import message

    corpus = sorted((Path(__file__).parent.parent / "corpus").glob("*.eml"))
    ours = [read_facts(path.read_bytes()) for path in corpus]
    monkeypatch.setattr(message, "_PARSER", BytesParser(policy=policy.default))
    assert len(corpus) >= 30
    assert ours == [read_facts(path.read_bytes()) for path in corpus]
