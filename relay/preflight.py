"""What `estampille check-config` checks beyond the file itself: that every file the
configuration names opens, in the format it must have (the TLS key matching its
certificate), and that members can reach the links the relay writes.

Each check reuses the loader the relay runs at start, so the two cannot disagree;
the relay's start would otherwise find these problems only after creating its data
directory and generating keys.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from relay.config import Config
from relay.errors import EstampilleError

DEFAULT_PORTS = {"http": 80, "https": 443}


def file_problems(config: Config) -> list[str]:
    """One line per file named by the configuration that the relay could not load."""
    from relay.certify import acklink, dkim
    from relay.smtp.auth import load_credentials
    from relay.smtp.intake import tls_context

    checks: list[Callable[[], object]] = [lambda: tls_context(config)]
    if config.smtp.credentials_file:
        checks.append(lambda: load_credentials(Path(config.smtp.credentials_file)))
    checks.extend(functools.partial(dkim.DomainKeys.from_config, entry) for entry in config.dkim.domains)
    checks.append(lambda: acklink.AckTemplates.from_config(config.ack))
    problems = []
    for check in checks:
        try:
            check()
        except EstampilleError as exc:
            problems.append(str(exc))
    return problems


def public_url_problem(config: Config) -> str | None:
    """Why links under tracker.public_url would not reach the tracker, or None.

    Without a proxy (tracker.trusted_proxies), members reach the tracker directly: the
    URL must name its port, and an address members can reach.
    """
    tracker = config.tracker
    if not tracker.enabled or tracker.trusted_proxies:
        return None
    parts = urlsplit(tracker.public_url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if tracker.listen_port and port != tracker.listen_port:
        return (f"tracker.public_url = {tracker.public_url!r} leads to port {port}, but the tracker listens on"
                f" {tracker.listen_port} and no proxy is declared (tracker.trusted_proxies)")
    try:
        unspecified = ipaddress.ip_address(parts.hostname or "").is_unspecified
    except ValueError:
        unspecified = False
    if unspecified:
        return f"tracker.public_url = {tracker.public_url!r}: members cannot reach that address; name the host"
    return None
