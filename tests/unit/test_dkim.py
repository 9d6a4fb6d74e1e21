"""DKIM signing: byte-identical to dkimpy, verifiable, the right header list, keys handled with care."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from unittest import mock

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.certify import dkim
from relay.config import DKIMConfig, DKIMDomain
from relay.errors import DKIMKeyError
from tests.support.dkimcheck import dkimpy_results, make_keyring

NOW = 1_790_000_000
MESSAGE = (
    b"From: Mairie <mairie@ville-exemple.fr>\r\n"
    b"To: elu@ville-exemple.fr\r\n"
    b"Subject: Convocation  au\r\n\tconseil\r\n"
    b"Date: Tue, 01 Dec 2026 09:00:00 +0100\r\n"
    b"Message-ID: <m1@ville-exemple.fr>\r\n"
    b"X-Mailer: convocations 3.2\r\n"
    b"\r\n"
    b"Bonjour,  \r\n\r\nConvocation.\r\n\r\n\r\n"
)


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> dkim.Keyring:
    return make_keyring(tmp_path_factory.mktemp("keys"))


def _tags(signature_field: bytes) -> dict[bytes, bytes]:
    return dkimpy.util.parse_tag_value(signature_field.split(b":", 1)[1])


def _signatures(data: bytes) -> list[bytes]:
    headers, _ = dkimpy.rfc822_parse(data)
    return [name + b":" + value for name, value in headers if name.lower() == b"dkim-signature"]


def test_signatures_are_byte_identical_to_dkimpy(keyring: dkim.Keyring) -> None:
    keys = keyring.domains["ville-exemple.fr"]
    include = [h.encode() for h in dkim.SIGNED_HEADERS] + [b"from"]
    rsa_pem = keys.rsa.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    seed = keys.ed25519.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    with mock.patch.object(dkimpy.time, "time", return_value=NOW):
        theirs_rsa = dkimpy.sign(MESSAGE, b"rsa", b"ville-exemple.fr", rsa_pem,
                                 canonicalize=(b"relaxed", b"relaxed"), include_headers=include)
        theirs_ed = dkimpy.sign(MESSAGE, b"ed", b"ville-exemple.fr", base64.b64encode(seed),
                                canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
                                signature_algorithm=b"ed25519-sha256")
    ours = dkim.sign(MESSAGE, keys, dkim.SIGNED_HEADERS, NOW)
    assert ours == theirs_rsa + theirs_ed + MESSAGE


def test_both_signatures_verify_with_dkimpy(keyring: dkim.Keyring) -> None:
    signed = dkim.sign(MESSAGE, keyring.domains["ville-exemple.fr"], keyring.signed_headers, NOW)
    assert dkimpy_results(signed, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}


def test_signature_tags_relaxed_explicit_headers_from_oversigned_no_length(tmp_path: Path) -> None:
    ring = make_keyring(tmp_path, extra_headers=["X-Mailer", "Subject"])
    signed = dkim.sign(MESSAGE, ring.domains["ville-exemple.fr"], ring.signed_headers, NOW)
    sigs = _signatures(signed)
    assert len(sigs) == 2
    for sig in sigs:
        tags = _tags(sig)
        assert tags[b"c"] == b"relaxed/relaxed"
        assert b"l" not in tags
        assert tags[b"t"] == str(NOW).encode()
        names = [n.strip() for n in tags[b"h"].split(b":")]
        assert names.count(b"from") == 2  # one From present, signed twice: none can be added
        for wanted in (b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
                       b"content-transfer-encoding", b"reply-to", b"list-unsubscribe", b"list-unsubscribe-post",
                       b"x-mailer"):
            assert wanted in names
        assert names.count(b"subject") == 1
    assert {_tags(s)[b"a"] for s in sigs} == {b"rsa-sha256", b"ed25519-sha256"}
    assert dkimpy_results(signed, ring) == {"rsa-sha256": True, "ed25519-sha256": True}


def test_our_earlier_signatures_are_replaced_and_others_kept(keyring: dkim.Keyring) -> None:
    keys = keyring.domains["ville-exemple.fr"]
    foreign_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    foreign = dkimpy.sign(MESSAGE, b"s1", b"editeur.example.com", foreign_key) + MESSAGE
    once = dkim.sign(foreign, keys, dkim.SIGNED_HEADERS, NOW)
    twice = dkim.sign(once, keys, dkim.SIGNED_HEADERS, NOW + 60)
    sigs = _signatures(twice)
    assert len(sigs) == 3
    assert [_tags(s)[b"d"] for s in sigs].count(b"editeur.example.com") == 1
    assert {_tags(s)[b"t"] for s in sigs if _tags(s)[b"d"] == b"ville-exemple.fr"} == {str(NOW + 60).encode()}
    assert dkimpy_results(twice, keyring) == {"rsa-sha256": True, "ed25519-sha256": True}


def test_keys_for_sender_domain_default_and_refuse(tmp_path: Path) -> None:
    a = dkim.generate_keys(tmp_path / "a", "ville-a.fr", "rsa", "ed")
    b = dkim.generate_keys(tmp_path / "b", "ville-b.fr", "rsa", "ed")
    ring = dkim.Keyring.from_config(DKIMConfig(domains=[a, b], default_domain="ville-b.fr"))
    assert ring.for_addresses(["mairie@ville-a.fr"]).domain == "ville-a.fr"
    assert ring.for_addresses(["mairie@services.ville-a.fr"]).domain == "ville-a.fr"
    assert ring.for_addresses(["x@other.example", "mairie@ville-a.fr"]).domain == "ville-a.fr"
    assert ring.for_addresses(["x@other.example"]).domain == "ville-b.fr"
    strict = dkim.Keyring.from_config(DKIMConfig(domains=[a, b], unknown_domain="refuse"))
    with pytest.raises(DKIMKeyError):
        strict.for_addresses(["x@other.example"])
    assert strict.for_addresses(["MAIRIE@VILLE-B.FR"]).domain == "ville-b.fr"


def test_generated_keys_are_private_and_never_overwritten(tmp_path: Path) -> None:
    entry = dkim.generate_keys(tmp_path / "k", "ville-exemple.fr", "s2026", "e2026")
    for path in (entry.rsa_key, entry.ed25519_key):
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    keys = dkim.DomainKeys.from_config(entry)
    assert keys.rsa.private_key.key_size == 2048
    assert keys.ed25519.dns_txt.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(keys.ed25519.public_key)) == 32
    assert keys.rsa.dns_name == "s2026._domainkey.ville-exemple.fr"
    with pytest.raises(DKIMKeyError, match="already exists"):
        dkim.generate_keys(tmp_path / "k", "ville-exemple.fr", "s2026", "e2026")


def test_first_start_generates_once(tmp_path: Path) -> None:
    entry, created = dkim.ensure_default_keys(tmp_path, "relay.example.org")
    again, created_again = dkim.ensure_default_keys(tmp_path, "relay.example.org")
    assert created and not created_again
    assert entry == again
    assert Path(entry.rsa_key).parent == tmp_path / "dkim"


def test_unusable_keys_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(DKIMKeyError, match="not a PEM private key"):
        dkim.SigningKey.from_file("d.example", "s", str(garbage))
    with pytest.raises(DKIMKeyError, match="cannot read"):
        dkim.SigningKey.from_file("d.example", "s", str(tmp_path / "missing.pem"))
    entry = dkim.generate_keys(tmp_path / "k", "d.example", "rsa", "ed")
    swapped = DKIMDomain(domain="d.example", rsa_key=entry.ed25519_key, ed25519_key=entry.rsa_key)
    with pytest.raises(DKIMKeyError, match="must be RSA"):
        dkim.DomainKeys.from_config(swapped)


def test_dkim_keygen_command_writes_private_keys_and_prints_both_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from relay.cli import main

    argv = ["dkim-keygen", "--domain", "ville-exemple.fr", "--selector", "s2026", "--dir", str(tmp_path / "k")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 's2026._domainkey.ville-exemple.fr. IN TXT ( "v=DKIM1; k=rsa; p=' in out
    assert 's2026-ed._domainkey.ville-exemple.fr. IN TXT ( "v=DKIM1; k=ed25519; p=' in out
    keys = sorted((tmp_path / "k").iterdir())
    assert len(keys) == 2 and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    entry = DKIMDomain(domain="ville-exemple.fr", rsa_selector="s2026", rsa_key=str(keys[1]),
                       ed25519_selector="s2026-ed", ed25519_key=str(keys[0]))
    published = dkim.DomainKeys.from_config(entry)
    assert published.rsa.public_key in out.replace('" "', "") and published.ed25519.public_key in out
    assert main(argv) == 4  # an existing key is never overwritten
    assert "already exists" in capsys.readouterr().err


CORPUS_DIR = Path(__file__).resolve().parent.parent / "corpus"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=60).map(lambda b: bytes(b" \t\r\nab"[x % 6] for x in b)))
def test_relaxed_body_canonicalisation_is_dkimpys(body: bytes) -> None:
    assert dkim.relaxed_body(body) == dkimpy.canonicalization.Relaxed.canonicalize_body(body)


def test_relaxed_body_canonicalisation_is_dkimpys_on_the_corpus() -> None:
    for path in sorted(CORPUS_DIR.glob("*.eml")):
        body = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").split(b"\r\n\r\n", 1)[-1]
        for sample in (body, body.replace(b" ", b" \t  "), body + b"  \r\n\r\n"):
            assert dkim.relaxed_body(sample) == dkimpy.canonicalization.Relaxed.canonicalize_body(sample)


def test_serve_without_configured_keys_generates_them_once_and_logs_the_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from relay.config import Config, SMTPConfig

    config = Config(data_dir=str(tmp_path), smtp=SMTPConfig(hostname="relais.commune.example"))
    with caplog.at_level("INFO", logger="estampille.dkim"):
        first = dkim.load_keyring(config)
    assert first.default_domain == "relais.commune.example"
    assert "rsa._domainkey.relais.commune.example. IN TXT" in caplog.text
    assert str(tmp_path / "dkim") in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="estampille.dkim"):
        second = dkim.load_keyring(config)
    assert "IN TXT" not in caplog.text  # already there: not generated again
    assert second.domains["relais.commune.example"].rsa.public_key == first.domains["relais.commune.example"].rsa.public_key
    bare = dkim.load_keyring(Config(data_dir=str(tmp_path / "other"), smtp=SMTPConfig(hostname="localhost")))
    assert bare.default_domain == dkim.FALLBACK_DOMAIN
