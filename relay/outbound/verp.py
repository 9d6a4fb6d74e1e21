"""Return paths of their own (VERP) and delivery status requests (RFC 3461) for each copy.

With ``dsn.bounce_domain`` set, each copy leaves with the envelope sender
``bounces+<token>@<bounce domain>``: the token is random (TOKEN_BYTES), stored with its
delivery before the copy is sent, so the report that comes back names its delivery and nobody
can guess another's. When the outbound MTA offers DSN, the copy also asks for a report on
success, failure and delay (NOTIFY), names its recipient (ORCPT), asks for headers only in a
failure report (RET=HDRS) and carries the token as its envelope id (ENVID).

Pure: the caller draws the token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN_BYTES = 16
LOCAL_PREFIX = "bounces+"
NOTIFY = "NOTIFY=SUCCESS,FAILURE,DELAY"
# Lowercase hex: some MTAs lowercase the local part of the address they bounce to.
_TOKEN = re.compile(rf"[0-9a-f]{{{2 * TOKEN_BYTES}}}")


def return_path(token: str, bounce_domain: str) -> str:
    """The envelope sender of the copy whose return token is ``token``."""
    return f"{LOCAL_PREFIX}{token}@{bounce_domain}"


def in_bounce_domain(address: str, bounce_domain: str) -> bool:
    """Whether ``address`` is at the bounce domain (any local part)."""
    return bool(bounce_domain) and address.rpartition("@")[2].lower() == bounce_domain.lower()


def token_of(address: str, bounce_domain: str) -> str | None:
    """The return token in ``address`` (``bounces+<token>@<bounce domain>``), else None."""
    local, _, domain = address.rpartition("@")
    if not bounce_domain or domain.lower() != bounce_domain.lower():
        return None
    local = local.lower()
    if not local.startswith(LOCAL_PREFIX) or not _TOKEN.fullmatch(local[len(LOCAL_PREFIX):]):
        return None
    return local[len(LOCAL_PREFIX):]


def orcpt_of(rcpt_options: tuple[str, ...]) -> str | None:
    """The ORCPT parameter's value among a recipient's RCPT parameters, as the client gave it."""
    for opt in rcpt_options:
        if opt.upper().startswith("ORCPT="):
            return opt[len("ORCPT="):]
    return None


def xtext(value: str) -> str:
    """RFC 3461 4.1 xtext: '+', '=', controls, space and non-ASCII as '+XX'."""
    return "".join(
        f"+{octet:02X}" if octet < 33 or octet > 126 or octet in (0x2B, 0x3D) else chr(octet)
        for octet in value.encode("utf-8")
    )


@dataclass(frozen=True)
class StatusRequest:
    """What one copy asks the outbound MTA, when it offers DSN: the MAIL and RCPT parameters."""

    token: str
    recipient: str
    orcpt: str | None = None  # the client's own ORCPT for this recipient, passed on as given

    @property
    def mail_options(self) -> list[str]:
        return ["RET=HDRS", f"ENVID={self.token}"]

    @property
    def rcpt_options(self) -> list[str]:
        options = [NOTIFY]
        if self.orcpt is not None:
            options.append(f"ORCPT={self.orcpt}")
        elif self.recipient.isascii():  # a UTF-8 address needs utf-8-addr-xtext (RFC 6533): left out
            options.append(f"ORCPT=rfc822;{xtext(self.recipient)}")
        return options
