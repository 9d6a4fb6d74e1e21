"""The acknowledgment form's anti-forgery value: an HMAC of the token under a server secret.

The value proves that a POST follows the page we served for that token, without
cookies or server-side sessions. The secret is generated once, on first start,
into the data directory with mode 0600, and kept across restarts so a page
served before a restart still works after it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from relay.errors import StoreError

SECRET_FILE = "tracker-secret"
SECRET_BYTES = 32
FIELD = "form_key"  # the form field that carries the value
_CONTEXT = b"ack-form\0"  # what the value is for, so the secret's HMACs of other things never match


def load_secret(data_dir: Path) -> bytes:
    """The tracker's secret, created with mode 0600 the first time."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        _create_secret(path)
    try:
        secret = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    if len(secret) != SECRET_BYTES:
        raise StoreError(f"{path} is damaged ({len(secret)} bytes, expected {SECRET_BYTES}); delete it to renew")
    return secret


def _create_secret(path: Path) -> None:
    # Written aside then hard-linked into place: a crash never leaves a short file, and of
    # two processes starting at once the first link wins and both read the same secret.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)


class FormKey:
    """The form values of one secret: HMAC-SHA256 of ``ack-form\\0<token>``.

    The HMAC of the prefix is computed once and copied for each page: hmac.digest set up
    OpenSSL's MAC again and let go of the GIL on every page, which the database thread,
    committing fetches, could then hold up to its switch interval.
    """

    def __init__(self, secret: bytes) -> None:
        self._prefix = hmac.new(secret, _CONTEXT, hashlib.sha256)

    def value(self, token: str) -> str:
        """The value the page embeds for ``token``."""
        mac = self._prefix.copy()
        mac.update(token.encode("ascii"))
        return mac.hexdigest()

    def is_valid(self, token: str, value: str | None) -> bool:
        """Whether a posted value is the one the page for ``token`` carried (constant-time)."""
        # compare_digest raises on non-ASCII text: such a value is simply not the page's.
        return value is not None and value.isascii() and token.isascii() and hmac.compare_digest(
            self.value(token), value)


def form_value(secret: bytes, token: str) -> str:
    """The value the page for ``token`` embeds (what a client that knows the secret posts)."""
    return FormKey(secret).value(token)
