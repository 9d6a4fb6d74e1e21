"""Which address a request came from, behind configured reverse proxies.

``X-Forwarded-For`` is anyone's to write, so it is read only when the peer is a
configured proxy, and then from the right: each trusted proxy appended the
address it saw, so the first address that is not a trusted proxy is the client.
Pure: the caller passes the peer, the header values and the trusted networks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from tracker.classify import Network, in_networks


def client_address(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy that forwarded for someone."""
    if not trusted or in_networks(peer, trusted) is None:
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            break  # garbage from further left cannot be trusted; keep the last good hop
        client = address
        if in_networks(address, trusted) is None:
            break
    return client
