"""Pure tracker rules: fetch classification, client address behind proxies,
language negotiation, page times, the miss limit and the form-action CSP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from relay.ratelimit import RateLimiter
from tracker.classify import PERSON, SCANNER, classify_fetch, parse_networks
from tracker.forwarded import client_address
from tracker.i18n import format_time, negotiate
from tracker.pages import CSP, form_action_csp

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
SCANNERS = parse_networks(["40.92.0.0/15", "2a01:111::/32"])


def classify(**overrides):
    facts = dict(method="GET", user_agent=BROWSER, client_address="192.0.2.10", seconds_since_delivery=3600,
                 scanner_window=120, scanner_networks=SCANNERS)
    return classify_fetch(**{**facts, **overrides})


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"method": "HEAD"}, "HEAD request"),
        ({"client_address": "40.93.1.2"}, "from scanner network 40.92.0.0/15"),
        ({"client_address": "::ffff:40.92.0.9"}, "from scanner network 40.92.0.0/15"),
        ({"client_address": "2a01:111:f400::1"}, "from scanner network 2a01:111::/32"),
        ({"user_agent": ""}, "empty user agent"),
        ({"user_agent": "   "}, "empty user agent"),
        ({"user_agent": BROWSER.replace("Chrome/", "HeadlessChrome/")}, "automated user agent (headless)"),
        ({"user_agent": "python-requests/2.32"}, "automated user agent (python)"),
        ({"user_agent": "curl/8.5.0"}, "automated user agent (curl)"),
        ({"seconds_since_delivery": 5}, "5 s after delivery (window 120 s)"),
        ({"seconds_since_delivery": -3}, "0 s after delivery (window 120 s)"),
    ],
)
def test_scanner_signs(overrides: dict, reason: str) -> None:
    verdict = classify(**overrides)
    assert (verdict.kind, verdict.reason) == (SCANNER, reason)


def test_a_browser_after_the_window_outside_scanner_networks_is_a_person() -> None:
    assert classify().kind == PERSON
    assert classify(seconds_since_delivery=120).kind == PERSON
    assert classify(client_address="not an address").kind == PERSON


PROXIES = parse_networks(["10.0.0.0/8", "::1/128"])


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # untrusted peer: header ignored
        ("10.0.0.2", [], "10.0.0.2"),
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["1.2.3.4, 198.51.100.1"], "198.51.100.1"),  # the client can write the left part
        ("10.0.0.2", ["198.51.100.1, 10.0.0.7"], "198.51.100.1"),  # two proxies deep
        ("10.0.0.2", ["198.51.100.1", "10.0.0.7"], "198.51.100.1"),  # header repeated
        ("10.0.0.2", ["garbage, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["198.51.100.1, garbage"], "10.0.0.2"),
        ("10.0.0.2", ["10.0.0.3, 10.0.0.7"], "10.0.0.3"),  # only proxies: the farthest
        ("::1", [" 2001:db8::5 "], "2001:db8::5"),
    ],
)
def test_client_address(peer: str, header: list[str], expected: str) -> None:
    assert client_address(peer, header, PROXIES) == expected


def test_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    assert client_address("10.0.0.2", ["198.51.100.1"], ()) == "10.0.0.2"


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        (None, "fr"), ("", "fr"), ("de", "fr"), ("en", "en"), ("en-US,en;q=0.9", "en"), ("fr-FR,en;q=0.8", "fr"),
        ("de, en;q=0.5, fr;q=0.3", "en"), ("en;q=0.2, fr;q=0.9", "fr"), ("en;q=0", "fr"), ("EN-gb", "en"),
        ("en;q=abc", "fr"), ("*", "fr"),
    ],
)
def test_negotiate(header: str | None, lang: str) -> None:
    assert negotiate(header) == lang


def test_format_time_in_the_configured_zone_summer_and_winter() -> None:
    assert format_time(1_795_930_400.0, "Europe/Paris", "fr") == "dimanche 29 novembre 2026 à 06:33 (Europe/Paris)"
    assert format_time(1_795_930_400.0, "Europe/Paris", "en") == "Sunday 29 November 2026 at 06:33 (Europe/Paris)"
    assert format_time(1_782_864_000.0, "Europe/Paris", "fr") == "mercredi 1er juillet 2026 à 02:00 (Europe/Paris)"
    assert format_time(1_795_930_400.0, "America/Cayenne", "fr").endswith("à 02:33 (America/Cayenne)")


def test_miss_limiter_counts_per_address_and_per_minute() -> None:
    limiter = RateLimiter(2)
    for _ in range(2):
        assert not limiter.blocked("a", 100.0)
        limiter.hit("a", 100.0)
    assert limiter.blocked("a", 159.0)
    assert not limiter.blocked("b", 159.0)
    assert not limiter.blocked("a", 160.0)  # a new window
    limiter.hit("a", 160.0)
    assert not limiter.blocked("a", 161.0)


def test_miss_limiter_counts_an_ipv6_slash64_as_one_client() -> None:
    """Before: each address of a /64 the client holds got its own 30 misses a minute."""
    limiter = RateLimiter(2)  # the tracker's miss limiter (tracker.app)
    limiter.hit("2001:db8:1:2::1", 100.0)
    limiter.hit("2001:db8:1:2::2", 100.0)
    assert limiter.blocked("2001:db8:1:2:ffff::9", 101.0)
    assert not limiter.blocked("2001:db8:1:3::1", 101.0)


def test_form_action_allows_only_the_target_origin() -> None:
    assert form_action_csp(None) == CSP
    assert form_action_csp("https://docs.example.org:8443/a?b=1#c").endswith(
        "form-action 'self' https://docs.example.org:8443"
    )
    # Nothing from the URL can add a directive.
    injected = form_action_csp("https://x.example; script-src *;/p")
    assert "script-src" not in injected and injected.endswith("form-action 'self' https:")


PURE = ["tracker/classify.py", "tracker/forwarded.py", "tracker/i18n.py", "relay/ratelimit.py"]


@pytest.mark.parametrize("module", PURE)
def test_rules_modules_do_no_io(module: str) -> None:
    tree = ast.parse((Path(__file__).parents[2] / module).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}
    assert not imported & {"asyncio", "aiohttp", "aiosqlite", "socket", "time", "os", "random", "secrets"}
