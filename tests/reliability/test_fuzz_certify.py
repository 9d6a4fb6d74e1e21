"""Generated messages through the certify step (Hypothesis, a bounded number of examples).

Random MIME trees (nested multiparts, digests and reports, missing or junk boundaries,
every transfer encoding, known, unknown and wrong charsets, text parts with inline file
names, signed, encrypted and forwarded entities at the top), header junk (8-bit, folded,
without a colon, duplicated), a From that is missing or has no domain, with or without an
envelope sender to supply one, NUL bytes, bare CR and bare LF. For every one: certify
refuses it (FromFieldError) only when neither the From nor the envelope sender has a
domain; else it returns a copy (it never raises) that carries its acknowledgment link
in a text part a mail reader shows, parses, has CRLF line endings only and no line over
998 octets, a From with a domain, both DKIM signatures that verify with dkimpy, every
attachment decoded to the same bytes as in the message received, and a signed,
encrypted or forwarded entity at the top kept byte for byte inside it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
from datetime import UTC, datetime
from email import policy
from email.parser import BytesHeaderParser, BytesParser
from email.utils import getaddresses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.certify import certifier as certify
from relay.certify import dkim
from relay.certify.acklink import AckTemplates
from relay.certify.message import to_crlf
from relay.config import AckConfig
from relay.errors import FromFieldError
from tests.support.dkimcheck import dkimpy_results, make_keyring, tokens_in

EXAMPLES = 500  # about 4 s; 150 missed the epilogue case that ed85992 fixes
# Parts that go out as they came, long lines and all: signed, encrypted, forwarded,
# base64 that does not decode, a multipart without a usable boundary.
UNTOUCHED = (b"multipart/signed", b"multipart/encrypted", b"pkcs7-mime", b"message/", b"base64", b'boundary=""')
PUBLIC = "https://accuse.ville-exemple.fr"
DATE = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
CHARSETS = ["utf-8", "iso-8859-1", "us-ascii", "windows-1252", "koi8-r", "x-unknown", "utf-16", '"utf-8"', ""]
ENCODINGS = ["7bit", "8bit", "binary", "quoted-printable", "base64", "x-uuencode", "BASE64", ""]
TEXT_TYPES = ["text/plain", "text/html"]
OTHER_TYPES = ["application/pdf", "image/png", "message/rfc822", "text/calendar", "application/pkcs7-mime"]
MULTIPART = ["mixed", "alternative", "related", "signed", "encrypted", "report", "digest"]
FROM_FIELDS = [b"From: Mairie <mairie@ville-exemple.fr>", None, b"From: Mairie <mairie>", b"From: mairie",
               b"From: undisclosed-recipients:;", b"From: "]
SENDERS = ["mairie@ville-exemple.fr", ""]  # the null sender supplies no domain
PROTECTED_ROOTS = ("multipart/signed", "multipart/encrypted", "application/pkcs7-mime", "message/")
JUNK_HEADERS = [
    b"X-Junk: \xff\xfe\x00 binary",
    b"no colon on this line",
    b"Subject: =?utf-8?B?invalid?= \xe9t\xe9",
    b"X-Folded: a\r\n\tb\r\n c",
    b"Content-Type: text/plain",  # a second Content-Type
    b"X-Long: " + b"mot " * 300,  # folded at its spaces (a run of 998 octets without one cannot be)
    b"To: " + b", ".join(b"elu%d@conseil.example" % i for i in range(60)),
    b"From: \"unterminated <nobody@",
    b"Date: not a date",
    b"Message-ID: <>",
    b":empty-name",
]
bytes_text = st.one_of(
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=300),
    st.sampled_from([b"line\rwith bare CR", b"line\nwith bare LF", b"nul\x00byte", b"\r\n.\r\n", b"=\r\n=3D=ZZ",
                     b"x" * 2500, b"<a href=\"https://example.org/?a=1&amp;b=2\">lien</a>"]),
)


@st.composite
def leaf(draw) -> tuple[bytes, bytes | None]:
    """A leaf part's bytes, and the payload of an attachment (None for other parts)."""
    ctype = draw(st.sampled_from(TEXT_TYPES + OTHER_TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(ENCODINGS))
    attachment = draw(st.booleans()) if ctype not in TEXT_TYPES else draw(st.booleans()) and draw(st.booleans())
    inline_file = not attachment and draw(st.booleans()) and draw(st.booleans())
    payload = b"".join(draw(st.lists(bytes_text, max_size=4)))
    head = [b"Content-Type: " + ctype.encode() + (b"; charset=" + charset.encode() if charset else b"")]
    if cte:
        head.append(b"Content-Transfer-Encoding: " + cte.encode())
    if attachment:
        head.append(b'Content-Disposition: attachment; filename="piece-jointe.bin"')
    elif inline_file:  # a text "file" shown inline: a body when it is the only text
        head.append(b'Content-Disposition: inline; filename="convocation.txt"')
    if cte.lower() == "base64" and draw(st.booleans()):
        body = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    elif cte == "quoted-printable" and draw(st.booleans()):
        body = binascii.b2a_qp(payload).replace(b"\n", b"\r\n")
    else:
        body = payload
    return b"\r\n".join(head) + b"\r\n\r\n" + body, payload if attachment else None


def tree(depth: int = 0):
    if depth >= 3:
        return leaf()
    return st.one_of(leaf(), multipart(depth))


@st.composite
def multipart(draw, depth: int) -> tuple[bytes, None]:
    subtype = draw(st.sampled_from(MULTIPART))
    boundary = draw(st.sampled_from(["b1", "==_Part_0", "a b", "x" * 80, "", "--"]))
    children = draw(st.lists(tree(depth + 1), min_size=0, max_size=4))
    closed = draw(st.booleans())
    parts = b"".join(b"--" + boundary.encode() + b"\r\n" + child + b"\r\n" for child, _ in children)
    preamble = draw(st.sampled_from([b"", b"This is a multi-part message in MIME format.", b"\xe9t\xe9 \x00"]))
    body = preamble + b"\r\n" + parts + (b"--" + boundary.encode() + b"--\r\n" if closed else b"")
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"'.encode()
    return head + b"\r\n\r\n" + body, None


@st.composite
def messages(draw) -> bytes:
    root, _ = draw(tree())
    head, _, body = root.partition(b"\r\n\r\n")
    sender = draw(st.sampled_from(FROM_FIELDS))
    fields = [f for f in (sender, b"To: elu@conseil.example", b"MIME-Version: 1.0") if f is not None]
    if draw(st.booleans()):
        fields.append(b"Subject: Convocation")
    fields += draw(st.lists(st.sampled_from(JUNK_HEADERS), max_size=3))
    data = b"\r\n".join(fields + [head]) + b"\r\n\r\n" + body
    ending = draw(st.sampled_from([b"\r\n", b"\n", b"\r", None]))
    if ending is not None:  # all line endings changed, or (None) a random mix
        return data.replace(b"\r\n", ending)
    return b"".join(line + draw(st.sampled_from([b"\r\n", b"\n", b"\r"])) for line in data.split(b"\r\n"))


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> dkim.Keyring:
    return make_keyring(tmp_path_factory.mktemp("keys"))


def attachments(data: bytes) -> list[str]:
    msg = BytesParser(policy=policy.compat32).parsebytes(data)
    out = []
    for part in msg.walk():
        if not part.is_multipart() and part.get_content_disposition() == "attachment":
            out.append(hashlib.sha256(part.get_payload(decode=True) or b"").hexdigest())
    return out


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
@given(data=messages(), rewrite=st.booleans(), mail_from=st.sampled_from(SENDERS))
def test_certify_links_every_copy_it_does_not_refuse_and_the_copy_parses_verifies_and_keeps_attachments(
    keyring, data, rewrite, mail_from
):
    ack = AckConfig(rewrite_patterns=["https://example.org/"] if rewrite else [])
    certifier = certify.Certifier(ack=ack, templates=AckTemplates.from_config(ack), public_url=PUBLIC,
                                  keyring=keyring)
    counter = itertools.count()
    normal = certify._with_trailing_blank(to_crlf(data))
    head = normal[: dkim.header_end(normal)]
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(head)
    from_ok = any(addr.rpartition("@")[0] and addr.rpartition("@")[2]
                  for _, addr in getaddresses([" ".join(str(parsed.get("from", "")).split())]))
    try:
        copy = certifier.certify(data, mail_from=mail_from, date=DATE, message_id_local="fuzz",
                                 tokens=lambda: f"t{next(counter):021d}", now=1_790_000_000)
    except FromFieldError:
        assert not from_ok and not mail_from
        return
    out = copy.data
    # The acknowledgment link, in a text part a reader shows.
    (block,) = [link for link in copy.links if link.target_url is None]
    assert copy.ack_link_inserted and block.token in tokens_in(out)
    if not from_ok:
        assert re.findall(rb"(?im)^from:[^\r]*", out[: dkim.header_end(out)]) == [b"From: " + mail_from.encode()]
    if copy.ack_link_placement == "wrapped" and parsed.get_content_type().startswith(PROTECTED_ROOTS):
        assert _entity(normal) in out  # a signed, encrypted or forwarded entity, byte for byte
    assert hashlib.sha256(out).hexdigest() == copy.sha256
    BytesParser(policy=policy.default).parsebytes(out)  # parses
    lines = out.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines), "bare CR or LF left"
    if not any(kind in data.lower() for kind in UNTOUCHED):
        assert max(map(len, lines)) <= certify.MAX_LINE
    assert dkimpy_results(out, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}
    # Attachments as the message reads once its header block ends where RFC 5322 ends it
    # (a line that is no field: Python alone takes ':name' for one).
    assert attachments(out) == attachments(normal)


def _entity(message: bytes) -> bytes:
    head, _, body = message.partition(b"\r\n\r\n")
    fields = [f + b"\r\n" for f in re.split(rb"\r\n(?![ \t])", head) if f.lower().startswith(b"content-")]
    return b"".join(fields) + b"\r\n" + body
