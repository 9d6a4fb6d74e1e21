"""Log setup: text or one JSON object per line, levels, and the library loggers
that would print AUTH lines and acknowledgment tokens kept quiet."""

from __future__ import annotations

import io
import json
import logging

import pytest

from relay.config import LogConfig
from relay.logs import setup


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    guarded = {name: logging.getLogger(name).level for name in ("mail.log", "aiohttp.access")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in guarded.items():
        logging.getLogger(name).setLevel(lvl)


def test_json_lines_carry_extra_fields():
    out = io.StringIO()
    setup(LogConfig(level="INFO", format="json"), {}, out)
    logging.getLogger("estampille.intake").info(
        "queued %s", "s1", extra={"submission_id": "s1", "message_id": "<m@x>"}
    )
    logging.getLogger("estampille.intake").debug("not shown at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("estampille.deliver").exception("attempt failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["message"] == "queued s1"
    assert (first["submission_id"], first["message_id"], first["level"]) == ("s1", "<m@x>", "INFO")
    assert first["logger"] == "estampille.intake" and first["time"].endswith("+00:00")
    assert "ValueError: boom" in second["exception"]


def test_text_format_and_journal_priority():
    out = io.StringIO()
    setup(LogConfig(level="INFO", format="text"), {"JOURNAL_STREAM": "8:1234"}, out)
    logging.getLogger("estampille.service").warning("disk nearly full")
    logging.getLogger("estampille.service").info("started")
    assert out.getvalue().splitlines() == [
        "<4>WARNING estampille.service: disk nearly full",
        "<6>INFO estampille.service: started",
    ]


def test_library_loggers_that_print_secrets_stay_quiet_even_at_debug():
    out = io.StringIO()
    setup(LogConfig(level="DEBUG", format="text"), {}, out)
    logging.getLogger("mail.log").info("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
    logging.getLogger("aiohttp.access").info('GET /a/SECRET-TOKEN HTTP/1.1" 200')
    logging.getLogger("estampille.x").debug("visible")
    assert "AGFsaWNl" not in out.getvalue() and "SECRET-TOKEN" not in out.getvalue()
    assert "visible" in out.getvalue()
