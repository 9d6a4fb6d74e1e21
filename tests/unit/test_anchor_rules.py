"""relay.anchor.worker's rules that need no network: calendar URLs and the upgrade allowlist."""

from __future__ import annotations

from relay.anchor.worker import Anchorer, calendar_url
from relay.config import AnchorConfig


def test_calendar_url_keeps_a_path_without_trailing_slash():
    # urljoin("https://example.org/cal", "digest") would give https://example.org/digest
    assert calendar_url("https://example.org/cal", "digest") == "https://example.org/cal/digest"
    assert calendar_url("https://example.org/cal/", "timestamp/ab") == "https://example.org/cal/timestamp/ab"
    assert calendar_url("https://a.pool.opentimestamps.org", "digest") == "https://a.pool.opentimestamps.org/digest"


def test_allowlist_is_https_hosts_plus_configured_calendars():
    anchorer = Anchorer(None, AnchorConfig())  # type: ignore[arg-type]  # the store is not used here
    assert anchorer.allowed("https://alice.btc.calendar.opentimestamps.org")
    assert anchorer.allowed("https://a.pool.opentimestamps.org")
    assert not anchorer.allowed("https://evil.example")
    assert not anchorer.allowed("https://alice.btc.calendar.opentimestamps.org.evil.example")
    custom = Anchorer(None, AnchorConfig(calendars=["http://127.0.0.1:8080/cal"], min_calendars=1,  # type: ignore[arg-type]
                                         allowlist=["*.calendar.example.org"], http_for_tests=True))
    assert custom.allowed("http://127.0.0.1:9999")
    assert custom.allowed("https://bob.calendar.example.org")
    assert not custom.allowed("https://alice.btc.calendar.opentimestamps.org")
