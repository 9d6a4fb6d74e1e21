"""Finding the submission a proof is about: a Message-ID may name several.

An application can send two messages with one Message-ID (a resend, a bug, or someone
hiding a message behind another): every one is listed, none hides another, and the
caller picks one by its submission id.
"""

from __future__ import annotations

from typing import Any

from relay.store import Store


async def submissions_with_message_id(store: Store, message_id: str) -> list[Any]:
    """Every submission carrying ``message_id`` (with or without angle brackets), newest first."""
    bare = message_id.strip().removeprefix("<").removesuffix(">")
    return await store.fetchall(
        "SELECT * FROM submissions WHERE message_id IN (?, ?) AND kind = 'mail' ORDER BY received_at DESC, id",
        (bare, f"<{bare}>"),
    )
