"""`estampille check-config` opens every file the configuration names, as the relay's start
would, and checks that tracker.public_url leads to the tracker; `serve` refuses the same
mistakes before it creates anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.certify import dkim
from relay.cli import EXIT_CONFIG, main
from relay.config import Config
from tests.support.tlscert import self_signed


def check(tmp_path: Path, body: str, capsys, *argv: str) -> tuple[int, str]:
    path = tmp_path / "estampille.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{body}', encoding="utf-8")
    code = main([*(argv or ("check-config",)), "--config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def certificate(directory: Path) -> tuple[Path, Path]:
    directory.mkdir()
    return self_signed(directory)


def tls(cert: Path, key: Path) -> str:
    return f'[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'


def test_a_complete_configuration_is_ok(tmp_path, capsys):
    cert, key = certificate(tmp_path / "tls")
    keys = dkim.generate_keys(tmp_path / "dkim", "commune.example", "s1", "s1-ed")
    (tmp_path / "credentials").write_text("")
    body = (tls(cert, key) + f'credentials_file = "{tmp_path / "credentials"}"\n'
            f'[[dkim.domains]]\ndomain = "commune.example"\nrsa_selector = "s1"\nrsa_key = "{keys.rsa_key}"\n'
            f'ed25519_selector = "s1-ed"\ned25519_key = "{keys.ed25519_key}"\n')
    code, text = check(tmp_path, body, capsys)
    assert code == 0 and "configuration OK" in text, text


@pytest.mark.parametrize("case", ["missing", "not PEM", "key of another certificate"])
def test_tls_files_that_do_not_load(tmp_path, capsys, case):
    cert, key = certificate(tmp_path / "tls")
    if case == "missing":
        key = tmp_path / "tls" / "absent.pem"
    elif case == "not PEM":
        key.write_text("not a key\n")
    else:
        _, key = certificate(tmp_path / "other")
    code, text = check(tmp_path, tls(cert, key), capsys)
    assert code == EXIT_CONFIG and "smtp.tls_cert" in text and "configuration OK" not in text, text


@pytest.mark.parametrize("content", [None, "alice:plain-password\n"])
def test_a_credentials_file_that_does_not_load(tmp_path, capsys, content):
    path = tmp_path / "credentials"
    if content is not None:
        path.write_text(content)
    code, text = check(tmp_path, f'[smtp]\ncredentials_file = "{path}"\n', capsys)
    assert code == EXIT_CONFIG and str(path) in text, text


@pytest.mark.parametrize("content", [None, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_dkim_keys_that_do_not_load(tmp_path, capsys, content):
    rsa = tmp_path / "d.rsa.pem"
    if content is not None:
        rsa.write_bytes(content)
    keys = dkim.generate_keys(tmp_path / "dkim", "commune.example", "s1", "s1-ed")
    body = (f'[[dkim.domains]]\ndomain = "commune.example"\nrsa_selector = "s1"\nrsa_key = "{rsa}"\n'
            f'ed25519_selector = "s1-ed"\ned25519_key = "{keys.ed25519_key}"\n')
    code, text = check(tmp_path, body, capsys)
    assert code == EXIT_CONFIG and ("s1._domainkey.commune.example" in text or str(rsa) in text), text


def test_an_acknowledgment_template_that_does_not_load(tmp_path, capsys):
    code, text = check(tmp_path, f'[ack]\nhtml_template = "{tmp_path / "absent.html"}"\n', capsys)
    assert code == EXIT_CONFIG and "ack.html_template" in text, text


def test_serve_refuses_before_creating_anything(tmp_path, capsys):
    cert, _ = certificate(tmp_path / "tls")
    code, text = check(tmp_path, tls(cert, tmp_path / "absent.pem"), capsys, "serve")
    assert code == EXIT_CONFIG and "smtp.tls_cert" in text, text
    assert not (tmp_path / "data").exists()


def test_public_url_follows_the_tracker_port_when_unset():
    """Before: the port moved, links stayed on 8025 and led nowhere."""
    assert Config.from_toml("[tracker]\nlisten_port = 9000\n").tracker.public_url == "http://127.0.0.1:9000"
    assert Config.from_toml('[tracker]\nlisten_host = "::1"\n').tracker.public_url == "http://[::1]:8025"
    assert Config.from_toml("").tracker.public_url == Config().tracker.public_url


@pytest.mark.parametrize("tracker,ok", [
    ('listen_port = 9000\npublic_url = "http://127.0.0.1:8025"', False),
    ('listen_port = 443\npublic_url = "https://accuse.commune.example"', True),
    ('listen_port = 8080\npublic_url = "https://accuse.commune.example"', False),
    ('listen_port = 8080\npublic_url = "https://accuse.commune.example"\ntrusted_proxies = ["127.0.0.1/32"]', True),
    ('listen_host = "0.0.0.0"\nlisten_port = 8080', False),
    ('enabled = false\nlisten_port = 9000\npublic_url = "https://accuse.commune.example/"', True),
])
def test_public_url_reaches_the_tracker_or_a_proxy(tmp_path, capsys, tracker, ok):
    code, text = check(tmp_path, f"[tracker]\n{tracker}\n", capsys)
    assert (code == 0) == ok, text
    assert ok or "tracker.public_url" in text
