"""Bounded reads of HTTP replies for the outbound clients (calendars, header sources).

A remote server must not make us buffer more than we expect: the body is read
in pieces and refused as soon as it passes the limit, whatever Content-Length says.
"""

from __future__ import annotations

import aiohttp

from relay.errors import EstampilleError


class ReplyTooLarge(EstampilleError):
    """A remote server answered with a body over the expected limit."""


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of ``response``; ReplyTooLarge if it has more than ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise ReplyTooLarge(f"{response.url.host} sent {response.content_length} bytes, limit {limit}")
    body = bytearray()
    async for chunk in response.content.iter_chunked(8192):
        body += chunk
        if len(body) > limit:
            raise ReplyTooLarge(f"{response.url.host} sent more than {limit} bytes")
    return bytes(body)
