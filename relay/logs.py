"""Logging for `estampille serve`: one line per event on stderr, as text or as
one JSON object per line (``log.format``), at ``log.level``.

What must never reach a log: a password, a token, a message body. Estampille's
own lines are written with that in mind; three libraries are not, and are kept
at WARNING whatever the level: aiosmtpd's ``mail.log`` logs every command line
a client sends, AUTH data included; aiohttp's access log prints request
paths, which carry acknowledgment tokens; aiosqlite logs every statement with
its parameters at DEBUG (certified copies, IP addresses, user agents).

Under systemd (``$JOURNAL_STREAM`` set) each line starts with its syslog
priority (``<3>``, ``<4>``, ...), which journald strips and records, so
``journalctl -p warning`` works; the time is left to the journal.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from relay.config import LogConfig

# Loggers that print what must stay out of logs, held at WARNING or above.
GUARDED_LOGGERS = ("mail.log", "aiohttp.access", "aiosqlite")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
# Attributes every LogRecord has; anything else came from ``extra=`` and is emitted as a field.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class JournalPrefix(logging.Formatter):
    """Prefixes another formatter's lines with the syslog priority journald reads."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{self.inner.format(record)}"


def setup(config: LogConfig, environ: Mapping[str, str], stream: TextIO | None = None) -> None:
    """Send every log line to ``stream`` (stderr) in the configured format and level."""
    journal = bool(environ.get("JOURNAL_STREAM"))
    formatter: logging.Formatter
    if config.format == "json":
        formatter = JSONFormatter()
    else:
        formatter = logging.Formatter(JOURNAL_TEXT_FORMAT if journal else TEXT_FORMAT)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JournalPrefix(formatter) if journal else formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level)
    guarded = max(logging.WARNING, root.level)
    for name in GUARDED_LOGGERS:
        logging.getLogger(name).setLevel(guarded)
