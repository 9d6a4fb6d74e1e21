"""The certify step on the corpus (tests/corpus/*.eml) and on generated messages.

For every message and two recipients: both DKIM signatures verify; no line over
998 octets; each copy carries its own acknowledgment link (or none, with a
reason, when the message must not be altered); attachments and protected parts
are unchanged after decoding; every other text is unchanged once the inserted
block is taken out; charsets and transfer encodings are kept.
"""

from __future__ import annotations

import ast
import base64
import itertools
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.certify import acklink, dkim
from relay.certify import certifier as certify
from relay.certify.acklink import AckTemplates
from relay.certify.message import read_facts, to_crlf
from relay.config import AckConfig, AckSender
from relay.errors import FromFieldError
from tests.conftest import require_tool
from tests.support.dkimcheck import dkimpy_results, make_keyring, max_line_length, parse, text_parts, tokens_in

CORPUS_DIR = Path(__file__).resolve().parent.parent / "corpus"
CORPUS = sorted(CORPUS_DIR.glob("*.eml"))
PUBLIC = "https://accuse.ville-exemple.fr"
PORTAL = "https://portail.ville-exemple.fr/"
SENDER = "mairie@ville-exemple.fr"
DATE = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
NOW = 1_790_000_000
# Messages with no part that can carry the block: wrapped in a new multipart/mixed (their entity
# kept byte for byte: signed, encrypted, forwarded, defective...), or given a new first part.
PLACED = {
    **dict.fromkeys([
        "12-smime-signed.eml", "13-smime-pkcs7-mime.eml", "14-pgp-mime-signed.eml", "15-pgp-mime-encrypted.eml",
        "29-attachment-only.eml", "33-digest.eml", "34-report-dsn.eml", "35-boundary-never-appears.eml",
        "36-multipart-without-boundary.eml", "43-single-image.eml", "44-toplevel-rfc822.eml",
        "45-smime-opaque-signed.eml", "50-alternative-enriched-calendar.eml", "51-related-image-only.eml",
        "52-unknown-charset.eml", "53-utf8-declared-invalid.eml",
    ], "wrapped"),
    **dict.fromkeys(["31-mixed-inline-filenames.eml", "48-mixed-attachments-only.eml",
                     "49-mixed-html-attachment-only.eml"], "first part"),
}
# Text declared (or defaulting to) us-ascii that holds 8-bit octets, and the charset it goes out with.
CHARSET_LIES = {
    "22-no-mime-headers.eml": "us-ascii",  # 7-bit: widened to UTF-8 like any ASCII text
    "37-utf8-undeclared-swaks.eml": "utf-8",
    "38-windows-1252-declared-ascii.eml": "windows-1252",
    "39-latin1-undeclared-unmapped.eml": "iso-8859-1",
}


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> dkim.Keyring:
    return make_keyring(tmp_path_factory.mktemp("keys"))


def certifier(keyring: dkim.Keyring, ack: AckConfig | None = None) -> certify.Certifier:
    ack = ack or AckConfig()
    return certify.Certifier(ack=ack, templates=AckTemplates.from_config(ack), public_url=PUBLIC, keyring=keyring)


def tokens(prefix: str):
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter):022d}"


def run(c: certify.Certifier, data: bytes, prefix: str = "r1", **kw) -> certify.Certified:
    args = dict(mail_from=SENDER, date=DATE, message_id_local="sub-1", tokens=tokens(prefix), now=NOW)
    return c.certify(data, **{**args, **kw})


def _nl(text: str) -> str:
    return text.replace("\r\n", "\n")


def _without_block(text: str, ctype: str, url: str, templates: AckTemplates) -> str:
    block = templates.html_block(url) if ctype == "text/html" else templates.text_block(url)
    return _nl(text).replace(_nl(block), "", 1)


def _leaf_encodings(data: bytes) -> list[tuple[str, str | None, str]]:
    """(content type, charset, transfer encoding) of each leaf, outside protected parts."""
    out = []

    def walk(part) -> None:
        ctype = part.get_content_type()
        if ctype in ("multipart/signed", "multipart/encrypted") or ctype.startswith("message/"):
            return
        if part.is_multipart():
            for sub in part.iter_parts():
                walk(sub)
            return
        out.append((ctype, part.get_content_charset(), str(part.get("content-transfer-encoding", "7bit")).lower()))

    walk(parse(data))
    return out


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_message_certified_for_two_recipients(path: Path, keyring: dkim.Keyring) -> None:
    original = path.read_bytes()
    c = certifier(keyring)
    templates = c.templates
    first, second = run(c, original, "rA"), run(c, original, "rB")
    normal = to_crlf(original)

    for copy in (first, second):
        assert dkimpy_results(copy.data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}
        assert max_line_length(copy.data) <= certify.MAX_LINE
        assert b"\n" not in copy.data.replace(b"\r\n", b"") and b"\r" not in copy.data.replace(b"\r\n", b"")
        assert copy.data.endswith(b"\r\n")
        assert read_facts(copy.data).attachments == read_facts(original).attachments
        assert [d["algorithm"] for d in copy.dkim] == ["rsa-sha256", "ed25519-sha256"]

    # One link per copy, in the copy, different between recipients.
    for copy in (first, second):
        assert copy.ack_link_inserted and copy.ack_link_reason is None
        assert copy.ack_link_placement == PLACED.get(path.name)
        assert len(copy.links) == 1 and copy.links[0].target_url is None
        assert tokens_in(copy.data) == {copy.links[0].token}
    assert first.links[0].token != second.links[0].token
    assert first.message_id == second.message_id

    url = first.links[0].url(PUBLIC)
    before = text_parts(normal)
    after = text_parts(first.data)
    added = 0
    if path.name in PLACED:
        # The block's own part(s) first; HTML too when the message has HTML somewhere.
        added = 2 if after[1:2] and after[1][1] == templates.html_block(url).replace("\n", "\r\n") else 1
        assert [_nl(t) for _, t in after[:added]] == [_nl(templates.text_block(url)), _nl(templates.html_block(url))][:added]
        if PLACED[path.name] == "wrapped":  # the original entity, byte for byte (8-bit where SMTP allows)
            assert _entity(normal) in run(c, original, "rC", eight_bit_mime=not normal.isascii()).data
    # Every text is the original once the block is taken out; the first of each type has the block.
    assert [ct for ct, _ in after[added:]] == [ct for ct, _ in before]
    seen = set()
    for (ctype, old), (_, new) in zip(before, after[added:], strict=True):
        if path.name in CHARSET_LIES:
            continue  # the original's text, read as us-ascii, is not its text: see the test below
        if ctype not in seen and not added:
            assert _nl(new) != _nl(old) and _without_block(new, ctype, url, templates) == _nl(old)
        else:
            assert _nl(new) == _nl(old)
        seen.add(ctype)

    # Charsets and transfer encodings are kept, except where SMTP forces quoted-printable.
    fixed = CHARSET_LIES.get(path.name, "utf-8")
    for (ct, cs, cte), (ct2, cs2, cte2) in zip(_leaf_encodings(normal), _leaf_encodings(first.data)[added:], strict=True):
        assert ct2 == ct
        assert cs2 == cs or (cs in (None, "us-ascii") and cs2 == ("utf-8" if fixed == "us-ascii" else fixed))
        assert cte2 == cte or (cte in ("7bit", "8bit", None) and cte2 == "quoted-printable")


def _entity(message: bytes) -> bytes:
    """A message's MIME entity: its Content-* fields, the empty line, its body."""
    normal = certify._with_trailing_blank(message)
    head, _, body = normal.partition(b"\r\n\r\n")
    fields = [f + b"\r\n" for f in re.split(rb"\r\n(?![ \t])", head) if f.lower().startswith(b"content-")]
    return b"".join(fields) + b"\r\n" + body


def test_header_fields_keep_their_bytes(keyring: dkim.Keyring) -> None:
    for name in ("17-smtputf8.eml", "02-utf8-8bit.eml", "05-alternative-base64.eml", "16-forwarded-rfc822.eml"):
        original = to_crlf((CORPUS_DIR / name).read_bytes())
        copy = run(certifier(keyring), original, eight_bit_mime=True).data
        head = copy.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        for field in re.split(rb"\r\n(?![ \t])", original.split(b"\r\n\r\n", 1)[0]):
            assert field + b"\r\n" in head, (name, field)


def test_already_signed_message_keeps_the_foreign_signature(keyring: dkim.Keyring) -> None:
    copy = run(certifier(keyring), (CORPUS_DIR / "11-already-dkim-signed.eml").read_bytes()).data
    head = copy.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"DKIM-Signature:") == 3
    assert b"d=convocations-saas.example.com" in head


def test_missing_date_and_message_id_are_added_and_shared(keyring: dkim.Keyring) -> None:
    original = (CORPUS_DIR / "09-no-date-no-msgid.eml").read_bytes()
    c = certifier(keyring)
    a, b = run(c, original, "rA"), run(c, original, "rB")
    assert a.message_id == b.message_id == "<sub-1@ville-exemple.fr>"
    for copy in (a, b):
        msg = parse(copy.data)
        assert msg["Message-ID"] == "<sub-1@ville-exemple.fr>"
        assert msg["Date"] == "Tue, 01 Dec 2026 08:00:00 +0000"
    kept = run(c, (CORPUS_DIR / "01-ascii-plain.eml").read_bytes())
    assert kept.message_id == "<corpus-1@convocations.ville-exemple.fr>"
    assert parse(kept.data)["Date"] == "Tue, 01 Dec 2026 09:00:00 +0100"


def test_rewrite_mode_gives_each_link_its_own_token_and_keeps_targets_exact(keyring: dkim.Keyring) -> None:
    ack = AckConfig(senders=[AckSender(match="@ville-exemple.fr", insert=False, rewrite_patterns=[PORTAL])])
    copy = run(certifier(keyring, ack), (CORPUS_DIR / "08-links-special.eml").read_bytes())
    targets = [link.target_url for link in copy.links]
    assert targets == [
        f"{PORTAL}doc?id=1&part=2#section-3",
        f"{PORTAL}d%C3%A9lib%C3%A9ration_(2026)",
        f"{PORTAL}wiki/Conseil_(France)",
        f"{PORTAL}odj?a=1&b=2",
        f"{PORTAL}doc?id=1&part=2#section-3",
        f"{PORTAL}d%C3%A9lib%C3%A9ration_(2026)",
        f"{PORTAL}odj?a=1&b=2",
    ]
    assert len({link.token for link in copy.links}) == len(copy.links)
    assert tokens_in(copy.data) == {link.token for link in copy.links}
    text, page = (t for _, t in text_parts(copy.data))
    assert "https://autre.example.org/x?y=1&z=2" in text and PORTAL not in text and PORTAL not in page
    assert f"{copy.links[0].url(PUBLIC)}." in text  # the full stop stays outside the link
    assert f"{copy.links[2].url(PUBLIC)}!" in text
    assert dkimpy_results(copy.data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}


def test_insert_and_rewrite_together(keyring: dkim.Keyring) -> None:
    ack = AckConfig(insert=True, rewrite_patterns=[PORTAL])
    copy = run(certifier(keyring, ack), (CORPUS_DIR / "04-alternative-qp.eml").read_bytes())
    assert [link.target_url for link in copy.links] == [f"{PORTAL}odj/12", None, f"{PORTAL}odj/12"]
    assert tokens_in(copy.data) == {link.token for link in copy.links}


def test_links_disabled_for_a_sender_sends_the_message_unchanged_with_the_reason(keyring: dkim.Keyring) -> None:
    ack = AckConfig(senders=[AckSender(match="*", insert=False, rewrite_patterns=[])])
    original = to_crlf((CORPUS_DIR / "01-ascii-plain.eml").read_bytes())
    copy = run(certifier(keyring, ack), original)
    assert copy.links == () and copy.ack_link_reason == "acknowledgment links are disabled for this sender"
    assert copy.data.endswith(original)


def test_a_failure_while_editing_sends_the_message_unchanged_but_signed(
    keyring: dkim.Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self, root):
        raise UnicodeError("a part the editor cannot handle")

    monkeypatch.setattr(certify._Edits, "rebuild_all", broken)
    original = to_crlf((CORPUS_DIR / "04-alternative-qp.eml").read_bytes())
    copy = run(certifier(keyring), original)
    assert copy.links == () and not copy.ack_link_inserted
    assert copy.ack_link_reason == "message left unchanged: inserting the link failed (UnicodeError)"
    assert copy.data.endswith(original.split(b"\r\n\r\n", 1)[1])
    assert dkimpy_results(copy.data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}


def test_long_lines_become_quoted_printable(keyring: dkim.Keyring) -> None:
    for name in ("07-html-long-line.eml", "30-long-8bit-text.eml"):
        original = (CORPUS_DIR / name).read_bytes()
        assert max_line_length(to_crlf(original)) > certify.MAX_LINE
        copy = run(certifier(keyring), original, eight_bit_mime=True)
        assert max_line_length(copy.data) <= certify.MAX_LINE
        assert _leaf_encodings(copy.data)[0][2] == "quoted-printable"


@pytest.mark.parametrize("layout", ["preamble and epilogue", "no delimiter line"])
def test_long_lines_outside_the_parts_are_cut_without_changing_the_structure(keyring: dkim.Keyring,
                                                                              layout: str) -> None:
    # Found by tests/reliability/test_fuzz_certify.py: an epilogue holding a 2,500-octet line,
    # which an MTA enforcing the 998 limit would cut after signing, breaking both signatures.
    long = b"-" * 1500 + b"x" * 1000 + b"----"  # no piece of it may read as a delimiter line
    head = b'From: Mairie <mairie@ville-exemple.fr>\r\nTo: elu@conseil.example\r\nMIME-Version: 1.0\r\n'
    if layout == "no delimiter line":
        original = head + b'Content-Type: multipart/mixed; boundary="--"\r\n\r\n' + long + b"\r\n"
    else:
        part = b"Content-Type: text/plain; charset=utf-8\r\n\r\nOrdre du jour\r\n"
        original = (head + b'Content-Type: multipart/mixed; boundary="--"\r\n\r\n' + long + b"\r\n----\r\n"
                    + part + b"------\r\n" + long + b"\r\n----\r\n" + part)
    copy = run(certifier(keyring), original)
    assert max_line_length(copy.data) <= certify.MAX_LINE
    assert dkimpy_results(copy.data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}
    before, after = parse(original), parse(copy.data)
    if layout == "no delimiter line":  # no part to carry the link: the message is wrapped, its link first
        assert copy.ack_link_placement == "wrapped"
        after = after.get_payload()[1]
    assert [p.get_content_type() for p in after.walk()] == [p.get_content_type() for p in before.walk()]
    if layout == "preamble and epilogue":
        text = after.get_payload()[0].get_payload(decode=True).decode()
        assert text.rstrip().endswith("Ordre du jour") and "/a/r1" in text  # the one part, with its link
        assert len(after.get_payload()) == 1


def test_eight_bit_parts_stay_eight_bit_only_when_the_upstream_accepts_it(keyring: dkim.Keyring) -> None:
    original = (CORPUS_DIR / "02-utf8-8bit.eml").read_bytes()
    assert _leaf_encodings(run(certifier(keyring), original, eight_bit_mime=True).data)[0][2] == "8bit"
    seven = run(certifier(keyring), original, eight_bit_mime=False).data
    assert _leaf_encodings(seven)[0][2] == "quoted-printable"
    assert seven.split(b"\r\n\r\n", 1)[1].isascii()
    # The attachment of 20 (8bit text/plain) is re-encoded but its content is the same.
    mixed = (CORPUS_DIR / "20-related-inline-image.eml").read_bytes()
    copy = run(certifier(keyring), mixed, eight_bit_mime=False).data
    assert copy.split(b"\r\n\r\n", 1)[1].isascii()
    assert read_facts(copy).attachments == read_facts(mixed).attachments


def test_ascii_text_is_widened_to_utf8_and_other_charsets_keep_theirs(keyring: dkim.Keyring) -> None:
    ascii_copy = run(certifier(keyring), (CORPUS_DIR / "01-ascii-plain.eml").read_bytes()).data
    assert _leaf_encodings(ascii_copy)[0][1] == "utf-8"
    assert "Accusé de réception" in text_parts(ascii_copy)[0][1]
    latin = run(certifier(keyring), (CORPUS_DIR / "03-latin1-qp.eml").read_bytes()).data
    assert _leaf_encodings(latin)[0] == ("text/plain", "iso-8859-1", "quoted-printable")
    assert "Accusé de réception" in text_parts(latin)[0][1]
    html_latin = run(certifier(keyring), (CORPUS_DIR / "24-latin1-8bit-html.eml").read_bytes()).data
    assert _leaf_encodings(html_latin)[0][1] == "iso-8859-1"


def test_forwarded_message_is_kept_byte_for_byte(keyring: dkim.Keyring) -> None:
    original = to_crlf((CORPUS_DIR / "16-forwarded-rfc822.eml").read_bytes())
    forwarded = original.split(b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n", 1)[1]
    forwarded = forwarded.split(b"\r\n--fwd--", 1)[0]
    copy = run(certifier(keyring), original, eight_bit_mime=True)
    assert forwarded in copy.data
    assert copy.links[0].target_url is None  # the link went into the covering text, not the forwarded one


def test_twenty_megabyte_message(keyring: dkim.Keyring) -> None:
    attachment = bytes(range(256)) * (15 * 2**20 // 256)
    data = (
        b"From: mairie@ville-exemple.fr\r\nTo: conseil@ville-exemple.fr\r\nSubject: Dossier complet\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=big\r\n\r\n"
        b"--big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLe dossier est joint.\r\n"
        b"--big\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=dossier.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(attachment).replace(b"\n", b"\r\n")
        + b"--big--\r\n"
    )
    assert len(data) > 20 * 10**6
    copy = run(certifier(keyring), data)
    assert dkimpy_results(copy.data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}
    assert len(copy.links) == 1 and tokens_in(copy.data) == {copy.links[0].token}
    assert read_facts(copy.data).attachments == read_facts(data).attachments


def test_refused_sender_domain_raises(tmp_path: Path) -> None:
    ring = make_keyring(tmp_path, unknown_domain="refuse")
    with pytest.raises(Exception, match="no DKIM key"):
        certifier(ring).certify(
            b"From: x@other.example\r\n\r\nHi\r\n", mail_from="x@other.example", date=DATE,
            message_id_local="s", tokens=tokens("r"), now=NOW,
        )


@pytest.mark.parametrize("module", [certify, acklink, dkim], ids=lambda m: m.__name__)
def test_pure_modules_import_no_io_clock_or_randomness(module) -> None:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"asyncio", "aiosqlite", "aiohttp", "aiosmtpd", "aiosmtplib", "socket", "time", "random", "secrets"}
    assert not imported & forbidden
    source = Path(module.__file__).read_text(encoding="utf-8")
    assert "os.environ" not in source and "datetime.now" not in source


def test_one_preparation_serves_every_recipient(keyring: dkim.Keyring) -> None:
    c = certifier(keyring)
    for path in CORPUS:
        original = path.read_bytes()
        prepared = c.prepare(original, mail_from=SENDER, date=DATE, message_id_local="sub-1")
        for prefix in ("rA", "rB"):
            assert c.copy(prepared, tokens=tokens(prefix), now=NOW) == run(c, original, prefix), path.name


def test_charset_without_the_blocks_accents_keeps_its_charset_and_loses_only_the_blocks_accents(
    keyring: dkim.Keyring,
) -> None:
    body = "Заседание совета.\r\n"
    original = (
        "From: mairie@ville-exemple.fr\r\nTo: elu@conseil.example\r\nSubject: koi8\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=koi8-r\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body
    ).encode("koi8-r")
    copy = run(certifier(keyring), original, eight_bit_mime=True)
    assert _leaf_encodings(copy.data)[0] == ("text/plain", "koi8-r", "8bit")
    (_, text), = text_parts(copy.data)
    assert _nl(text).endswith(_nl(body)) and "Accuse de reception demande" in text
    assert tokens_in(copy.data) == {copy.links[0].token}


@pytest.mark.parametrize("name", ["37-utf8-undeclared-swaks.eml", "38-windows-1252-declared-ascii.eml",
                                  "39-latin1-undeclared-unmapped.eml"])
@pytest.mark.parametrize("eight_bit_mime", [True, False])
def test_text_that_lies_about_its_charset_goes_out_declared_without_losing_an_octet(
    keyring: dkim.Keyring, name: str, eight_bit_mime: bool
) -> None:
    original = to_crlf((CORPUS_DIR / name).read_bytes())
    charset = CHARSET_LIES[name]
    copy = run(certifier(keyring), original, eight_bit_mime=eight_bit_mime)
    (_, declared, _), = _leaf_encodings(copy.data)
    assert declared == charset
    msg = parse(copy.data)
    text = msg.get_payload(decode=True).decode(charset)
    body = original.split(b"\r\n\r\n", 1)[1]
    url = copy.links[0].url(PUBLIC)
    assert _without_block(text, "text/plain", url, certifier(keyring).templates).encode(charset) == _nl(
        body.decode("latin-1")).encode("latin-1")  # every octet of the body, back from the text sent
    assert "Accusé de réception" in text


@pytest.mark.parametrize(("name", "kept"), [("40-no-from.eml", None), ("41-from-without-domain.eml", b"Mairie <mairie>"),
                                            ("42-from-empty-group.eml", b"undisclosed-sender:;")])
def test_a_from_without_a_domain_becomes_the_envelope_sender(keyring: dkim.Keyring, name: str,
                                                             kept: bytes | None) -> None:
    original = (CORPUS_DIR / name).read_bytes()
    assert certify.from_repair(original, SENDER) == SENDER
    copy = run(certifier(keyring), original)
    head = copy.data.split(b"\r\n\r\n", 1)[0]
    assert re.findall(rb"(?im)^from:[^\r]*", head) == [b"From: " + SENDER.encode()]
    assert kept is None or kept not in head
    assert dkimpy_results(copy.data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}


@pytest.mark.parametrize("mail_from", ["", "mairie", "mairie@"])
def test_a_from_without_a_domain_and_no_envelope_domain_is_never_signed(keyring: dkim.Keyring,
                                                                         mail_from: str) -> None:
    original = (CORPUS_DIR / "40-no-from.eml").read_bytes()
    with pytest.raises(FromFieldError, match="add a From: field with a full address"):
        certify.from_repair(original, mail_from)
    with pytest.raises(FromFieldError):
        run(certifier(keyring), original, mail_from=mail_from)


def test_a_usable_from_is_left_alone() -> None:
    for path in CORPUS:
        if not path.name.startswith(("40-", "41-", "42-")):
            assert certify.from_repair(path.read_bytes(), "") is None, path.name


def _outer_parts(copy: bytes) -> list[bytes]:
    """The raw bytes of each part of a copy's top-level multipart (the wrapper)."""
    boundary = parse(copy).get_boundary().encode()
    body = copy.split(b"\r\n\r\n", 1)[1]
    inner = body.split(b"--" + boundary + b"\r\n", 1)[1].rsplit(b"\r\n--" + boundary + b"--", 1)[0]
    return inner.split(b"\r\n--" + boundary + b"\r\n")


@pytest.mark.external
def test_a_wrapped_smime_signature_still_verifies_with_openssl(keyring: dkim.Keyring, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp_path / "key.pem",
                    "-out", tmp_path / "cert.pem", "-days", "2", "-subj", "/CN=mairie@ville-exemple.fr"],
                   check=True, capture_output=True)
    (tmp_path / "content.txt").write_bytes(b"Content-Type: text/plain; charset=utf-8\r\n\r\nConvocation du 12.\r\n")
    signed = subprocess.run([openssl, "smime", "-sign", "-in", tmp_path / "content.txt", "-signer",
                             tmp_path / "cert.pem", "-inkey", tmp_path / "key.pem"],
                            check=True, capture_output=True).stdout
    original = b"From: Mairie <mairie@ville-exemple.fr>\r\nTo: elu@conseil.example\r\nSubject: S/MIME\r\n" + signed
    copy = run(certifier(keyring), original)
    assert copy.ack_link_placement == "wrapped" and tokens_in(copy.data) == {copy.links[0].token}
    assert dkimpy_results(copy.data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}
    (tmp_path / "entity.eml").write_bytes(_outer_parts(copy.data)[1])
    verified = subprocess.run([openssl, "smime", "-verify", "-in", tmp_path / "entity.eml", "-CAfile",
                               tmp_path / "cert.pem", "-purpose", "any"], capture_output=True)
    assert verified.returncode == 0 and b"Verification successful" in verified.stderr, verified.stderr
    # The same check fails once one octet of the signed text changes: it checks something.
    (tmp_path / "entity.eml").write_bytes(_outer_parts(copy.data)[1].replace(b"du 12", b"du 13"))
    tampered = subprocess.run([openssl, "smime", "-verify", "-in", tmp_path / "entity.eml", "-CAfile",
                               tmp_path / "cert.pem", "-purpose", "any"], capture_output=True)
    assert tampered.returncode != 0


@pytest.mark.external
def test_a_wrapped_pgp_mime_signature_still_verifies_with_gpg(keyring: dkim.Keyring, tmp_path: Path) -> None:
    gpg = require_tool("gpg")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run([gpg, "--batch", "--passphrase", "", "--quick-gen-key", "Mairie <mairie@ville-exemple.fr>",
                    "ed25519", "sign", "never"], check=True, capture_output=True, env=env)
    signed_part = b"Content-Type: text/plain; charset=utf-8\r\n\r\nConvocation du 12.\r\n"
    signature = subprocess.run([gpg, "--batch", "--armor", "--detach-sign"], input=signed_part, check=True,
                               capture_output=True, env=env).stdout
    original = (
        b"From: Mairie <mairie@ville-exemple.fr>\r\nTo: elu@conseil.example\r\nSubject: PGP/MIME\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha256;\r\n"
        b' protocol="application/pgp-signature"; boundary="sig"\r\n\r\n'
        b"--sig\r\n" + signed_part + b"\r\n--sig\r\nContent-Type: application/pgp-signature\r\n\r\n"
        + to_crlf(signature) + b"\r\n--sig--\r\n"
    )
    copy = run(certifier(keyring), original)
    assert copy.ack_link_placement == "wrapped" and tokens_in(copy.data) == {copy.links[0].token}
    assert dkimpy_results(copy.data, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}
    entity = _outer_parts(copy.data)[1]
    part, sig = entity.split(b"\r\n--sig\r\n", 2)[1:3]
    (tmp_path / "part").write_bytes(part)
    (tmp_path / "part.asc").write_bytes(sig.split(b"\r\n\r\n", 1)[1].split(b"\r\n--sig--", 1)[0])
    verified = subprocess.run([gpg, "--batch", "--verify", tmp_path / "part.asc", tmp_path / "part"],
                              capture_output=True, env=env)
    assert verified.returncode == 0 and b"Good signature" in verified.stderr, verified.stderr
    (tmp_path / "part").write_bytes(part.replace(b"du 12", b"du 13"))
    assert subprocess.run([gpg, "--batch", "--verify", tmp_path / "part.asc", tmp_path / "part"],
                          capture_output=True, env=env).returncode != 0


def test_a_wrapped_multipart_without_its_closing_delimiter_keeps_its_last_attachment(keyring: dkim.Keyring) -> None:
    # Found by tests/reliability/test_fuzz_certify.py: readers drop the line break that ends an
    # unclosed multipart at the end of the message; inside the wrapper it must go the same way.
    original = (b"From: Mairie <mairie@ville-exemple.fr>\r\nTo: elu@conseil.example\r\nMIME-Version: 1.0\r\n"
                b'Content-Type: multipart/report; boundary="r"\r\n\r\n--r\r\nContent-Type: text/plain\r\n'
                b'Content-Disposition: attachment; filename="releve.txt"\r\n\r\nligne\r\n')
    copy = run(certifier(keyring), original)
    assert copy.ack_link_placement == "wrapped" and _entity(original) in copy.data
    assert read_facts(copy.data).attachments == read_facts(original).attachments
