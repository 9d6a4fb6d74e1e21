"""Configuration checks for admin tokens and webhooks: one line naming the key."""

from __future__ import annotations

import pytest

from relay.config import Config
from relay.errors import ConfigError
from tracker.admin_auth import new_token, token_hash, token_ok


def test_a_token_instead_of_its_hash_is_refused_with_a_hint():
    token, digest = new_token()
    assert Config.from_toml(f'[admin]\ntoken_hashes = ["{digest}"]').admin.token_hashes == [digest]
    with pytest.raises(ConfigError, match=r"admin.token_hashes\[0\].*not the token itself"):
        Config.from_toml(f'[admin]\ntoken_hashes = ["{token}"]')


@pytest.mark.parametrize(
    "toml, key",
    [
        ('[webhooks]\nurls = ["ftp://example.org/hook"]\nsecret = "s"', r"webhooks.urls\[0\]"),
        ('[webhooks]\nurls = ["https://example.org/hook"]', "webhooks.secret"),
    ],
)
def test_webhook_settings_are_checked(toml, key):
    with pytest.raises(ConfigError, match=key):
        Config.from_toml(toml)


def test_tokens_match_only_their_own_hash():
    token, digest = new_token()
    other, _ = new_token()
    assert token_hash(token) == digest and token_ok(token, [digest.upper()])
    assert not token_ok(other, [digest]) and not token_ok("", [digest]) and not token_ok(None, [digest])
