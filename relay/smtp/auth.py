"""SMTP AUTH credentials: a file of ``user:hash`` lines, and a limiter of failed attempts.

Hashes are scrypt with a per-user random salt, written as
``scrypt$N$r$p$salt_hex$hash_hex``; comparison is constant time. An unknown user
costs the same hash as a known one, so timing does not tell which users exist.
The password is never logged and never taken from the command line.

Pure except :func:`load_credentials` and :func:`write_password`, which read and
write the file they are given; salts and clocks are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from relay.errors import ConfigError

SCRYPT_N = 2**14  # about 40 ms and 16 MB per check: slow for guessing, fine for a relay
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
SCHEME = "scrypt"
# The AUTH failure limiter: an IPv6 client holds a whole /64 (it would use a fresh
# address per guess), and the table is bounded so a flood of clients cannot fill memory.
IPV6_CLIENT_PREFIX = 64
MAX_TRACKED_CLIENTS = 100_000
_DUMMY = f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${'00' * SALT_BYTES}${'00' * HASH_BYTES}"


def hash_password(password: str, salt: bytes) -> str:
    """The stored form of ``password`` with ``salt``."""
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES,
        maxmem=64 * 2**20,
    )
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(stored: str, password: str) -> bool:
    """True when ``password`` matches ``stored``; False for any malformed entry."""
    try:
        scheme, n, r, p, salt_hex, hash_hex = stored.split("$")
        if scheme != SCHEME:
            return False
        expected = bytes.fromhex(hash_hex)
        digest = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt_hex), n=int(n), r=int(r), p=int(p),
            dklen=len(expected), maxmem=64 * 2**20,
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


@dataclass(frozen=True)
class Credentials:
    """The users allowed to AUTH, with their stored hashes."""

    hashes: dict[str, str] = field(default_factory=dict)

    def check(self, user: str, password: str) -> bool:
        stored = self.hashes.get(user)
        # Hash even for an unknown user so the answer takes the same time.
        ok = verify_password(stored or _DUMMY, password)
        return ok and stored is not None

    @classmethod
    def parse(cls, text: str, *, source: str = "credentials") -> "Credentials":
        hashes: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            if not sep or not user or not stored.startswith(SCHEME + "$"):
                raise ConfigError(f"{source} line {number}: expected 'user:scrypt$...' (see 'estampille passwd')")
            hashes[user] = stored
        return cls(hashes)


def load_credentials(path: Path) -> Credentials:
    """Read a credentials file; a missing or unreadable file is a configuration error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"smtp.credentials_file = {str(path)!r}: cannot read it ({exc.strerror})") from exc
    return Credentials.parse(text, source=str(path))


def write_password(path: Path, user: str, password: str, salt: bytes) -> None:
    """Add or replace ``user`` in the credentials file, atomically, readable by its owner only."""
    if not user or ":" in user or any(c.isspace() for c in user):
        raise ConfigError(f"user {user!r}: expected a name without ':' or spaces")
    if not password:
        raise ConfigError("empty password refused")
    lines: list[str] = []
    if path.exists():
        Credentials.parse(path.read_text(encoding="utf-8"), source=str(path))  # refuse to rewrite garbage
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.partition(":")[0] != user]
    lines.append(f"{user}:{hash_password(password, salt)}")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class FailureLimiter:
    """Counts failed AUTH attempts per client (an IPv4 address, an IPv6 /64) over a sliding minute."""

    per_minute: int
    window: float = 60.0
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def blocked(self, address: str, now: float) -> bool:
        recent = self._recent(client_key(address), now)
        return recent is not None and len(recent) >= self.per_minute

    def reserve(self, address: str, now: float) -> bool:
        """Count an attempt as failed before its check, so parallel attempts cannot all pass
        :meth:`blocked` first; False, and nothing counted, when the client is over its limit.
        A success gives the slot back with :meth:`release`."""
        if self.blocked(address, now):
            return False
        self.record_failure(address, now)
        return True

    def release(self, address: str, reserved_at: float) -> None:
        """Forget the attempt :meth:`reserve` counted at ``reserved_at``: it succeeded."""
        recent = self._failures.get(client_key(address))
        if recent is not None and reserved_at in recent:
            recent.remove(reserved_at)

    def record_failure(self, address: str, now: float) -> None:
        key = client_key(address)
        recent = self._recent(key, now)
        if recent is None:
            recent = self._failures[key] = deque()
        self._failures.move_to_end(key)
        recent.append(now)
        while len(self._failures) > MAX_TRACKED_CLIENTS:
            self._failures.popitem(last=False)  # the client whose last failure is oldest

    @property
    def tracked(self) -> int:
        return len(self._failures)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        recent = self._failures.get(key)
        if recent is None:
            return None
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if not recent:
            del self._failures[key]
            return None
        return recent


def client_key(address: str) -> str:
    """What the limiter counts by: the address, or for IPv6 its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(ip)
