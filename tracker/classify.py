"""Classify a fetch of an acknowledgment page: likely scanner or likely person.

Mail security scanners (Safe Links, Mimecast, Proofpoint, Barracuda) fetch every
link within seconds of delivery, often with HEAD or a headless browser, from
their own networks. A fetch showing any of those signs is a likely scanner; the
classification is evidence for a reader of the proof, never a reason to refuse.

Pure: the caller passes the request's facts and the configured limits.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

SCANNER = "scanner"
PERSON = "person"

# Substrings (lower case) of user agents that announce automation rather than a person.
AUTOMATED_AGENT_MARKERS = (
    "headless",
    "phantomjs",
    "puppeteer",
    "playwright",
    "selenium",
    "python-",
    "aiohttp",
    "curl/",
    "wget/",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww",
    "bot/",
    "spider",
    "crawler",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Classification:
    """What a fetch most likely was, and the sign that decided it."""

    kind: str  # SCANNER or PERSON
    reason: str


def parse_networks(networks: Sequence[str]) -> tuple[Network, ...]:
    """Configured network strings as network objects (already validated by the configuration)."""
    return tuple(ipaddress.ip_network(net, strict=False) for net in networks)


def in_networks(address: str, networks: Sequence[Network]) -> Network | None:
    """The first of ``networks`` holding ``address``, or None (also for an unparsable address)."""
    if not networks:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return next((net for net in networks if ip.version == net.version and ip in net), None)


def classify_fetch(
    *,
    method: str,
    user_agent: str,
    client_address: str,
    seconds_since_delivery: float,
    scanner_window: float,
    scanner_networks: Sequence[Network],
) -> Classification:
    """Likely scanner if HEAD, from a scanner network, automated or empty user agent, or too soon."""
    if method == "HEAD":
        return Classification(SCANNER, "HEAD request")
    network = in_networks(client_address, scanner_networks)
    if network is not None:
        return Classification(SCANNER, f"from scanner network {network}")
    agent = user_agent.strip()
    if not agent:
        return Classification(SCANNER, "empty user agent")
    lowered = agent.lower()
    marker = next((m for m in AUTOMATED_AGENT_MARKERS if m in lowered), None)
    if marker is not None:
        return Classification(SCANNER, f"automated user agent ({marker.strip('/-')})")
    if seconds_since_delivery < scanner_window:
        return Classification(
            SCANNER, f"{max(seconds_since_delivery, 0):.0f} s after delivery (window {scanner_window:.0f} s)"
        )
    return Classification(PERSON, "browser user agent, after the scanner window, outside scanner networks")
