"""relay.smtp.auth: credentials file, slow salted hashes, failure limiter."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from relay.errors import ConfigError
from relay.ratelimit import RateLimiter
from relay.smtp.auth import (
    Credentials,
    hash_password,
    load_credentials,
    verify_password,
    write_password,
)

SALT = b"sixteen byte salt"[:16]


def test_hash_round_trip_and_salt_matters():
    stored = hash_password("s3cret", SALT)
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_password(stored, "s3cret")
    assert not verify_password(stored, "s3cret ")
    assert hash_password("s3cret", b"another salt 16b") != stored


def test_malformed_entries_never_verify():
    for stored in ("", "plain", "scrypt$1$2$3$zz$yy", "md5$16384$8$1$00$00"):
        assert not verify_password(stored, "anything")


def test_file_written_private_and_users_replaced(tmp_path):
    path = tmp_path / "credentials"
    write_password(path, "mairie", "first", SALT)
    write_password(path, "cdg", "other", SALT)
    write_password(path, "mairie", "second", SALT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = load_credentials(path)
    assert sorted(creds.hashes) == ["cdg", "mairie"]
    assert creds.check("mairie", "second") and not creds.check("mairie", "first")
    assert not creds.check("nobody", "second")
    assert "second" not in path.read_text()


def test_bad_files_and_names_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="line 2"):
        Credentials.parse("a:scrypt$1\nbroken line\n")
    with pytest.raises(ConfigError):
        load_credentials(tmp_path / "absent")
    with pytest.raises(ConfigError):
        write_password(tmp_path / "c", "bad:name", "pw", SALT)
    with pytest.raises(ConfigError):
        write_password(tmp_path / "c", "user", "", SALT)


def test_limiter_blocks_after_the_limit_for_one_minute():
    limiter = RateLimiter(per_minute=2)
    assert not limiter.blocked("192.0.2.1", 0.0)
    limiter.hit("192.0.2.1", 0.0)
    limiter.hit("192.0.2.1", 10.0)
    assert limiter.blocked("192.0.2.1", 20.0)
    assert not limiter.blocked("192.0.2.2", 20.0)
    assert not limiter.blocked("192.0.2.1", 60.5)


def test_passwd_command_reads_stdin_never_argv(tmp_path):
    path = tmp_path / "credentials"
    done = subprocess.run(
        [sys.executable, "-m", "relay.cli", "passwd", "mairie", "--file", str(path)],
        input="from stdin\n", capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "from stdin" not in done.stdout + done.stderr
    assert load_credentials(path).check("mairie", "from stdin")
