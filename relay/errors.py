"""Estampille's exception tree.

Every error the project raises on purpose derives from :class:`EstampilleError`.
The edges translate them: the CLI into exit codes, intake into SMTP replies,
the tracker into HTTP statuses. Third-party errors are wrapped at the edge with
``raise ... from exc`` so callers only need to know this tree::

    EstampilleError
    ├── ConfigError            invalid or unreadable configuration
    ├── StoreError             the database or the message directory failed
    │   ├── DiskFullError      not enough free space to accept more mail
    │   └── ConflictError      another process changed the rows a write relied on
    ├── CertifyError           a message could not be certified
    │   └── FromFieldError     no From with a domain, none to supply from the envelope
    ├── DKIMKeyError           a DKIM key is missing or unusable
    ├── DeliveryError          the upstream could not be reached or refused
    ├── AnchorError            calendars unreachable or answered garbage
    ├── VerificationError      a proof does not verify (invalid, not pending)
    │   └── PendingError       a proof only carries pending attestations
    ├── HeaderSourceError      a Bitcoin header source failed or disagreed
    ├── BackupError            a backup could not be taken, checked or restored
    ├── NotFoundError          the thing asked for does not exist
    └── AmbiguousError         several messages carry the Message-ID asked for
"""

from __future__ import annotations

from typing import Any


class EstampilleError(Exception):
    """Base class of every error Estampille raises on purpose."""


class ConfigError(EstampilleError):
    """The configuration is invalid: names the key, the value and what is expected."""


class StoreError(EstampilleError):
    """The database or the content-addressed message directory failed."""


class DiskFullError(StoreError):
    """Free space is below the configured floor; no new mail is accepted."""


class ConflictError(StoreError):
    """Another process (e.g. `estampille anchor --now` beside the relay) changed the rows a
    write relied on; nothing was written, and the next round starts from what is stored."""


class CertifyError(EstampilleError):
    """A message could not be certified (signed, fingerprinted)."""


class FromFieldError(CertifyError):
    """The message has no From field with a domain and the envelope sender cannot supply one:
    DKIM must sign From (RFC 6376 5.4), so intake refuses it at the end of DATA."""


class DKIMKeyError(EstampilleError):
    """A DKIM key is missing, unreadable or of the wrong kind."""


class DeliveryError(EstampilleError):
    """The upstream refused or could not be reached."""


class AnchorError(EstampilleError):
    """OpenTimestamps calendars were unreachable or answered garbage."""


class VerificationError(EstampilleError):
    """A proof is invalid: the message names what failed."""


class PendingError(VerificationError):
    """A proof is well formed but only carries pending attestations."""


class HeaderSourceError(EstampilleError):
    """A Bitcoin block header source failed, or two sources disagreed."""


class BackupError(EstampilleError):
    """A backup could not be taken, is damaged, or would overwrite data without --force."""


class NotFoundError(EstampilleError):
    """The record, message or token asked for does not exist."""


class AmbiguousError(EstampilleError):
    """Several messages carry the Message-ID asked for: the caller must pick one of ``choices``."""

    def __init__(self, message: str, choices: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.choices = choices
