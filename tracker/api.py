"""The admin API, ``/api/v1``: messages by Message-ID as JSON, and their proof bundles.

Every route needs ``Authorization: Bearer <token>`` (``tracker.admin_auth``).
Errors are JSON ``{"error": code, "message": text}``; the OpenAPI document at
``/api/v1/openapi.json`` describes it all. Handlers stay thin: parse, call
``relay.proof.gather``, answer.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from relay.errors import AmbiguousError, EstampilleError, NotFoundError
from relay.evidence.records import iso_time
from relay.proof.gather import build_proof, load_message, message_json
from tracker import law
from tracker.admin_auth import API_PREFIX
from tracker.pages import TRACKER

log = logging.getLogger("estampille.api")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_QUERY = 200  # characters of a search
DOWNLOAD_CHUNK = 256 * 1024  # bytes read from the built bundle per write to the client
MAX_PAGE = 1_000_000


def add_routes(app: web.Application) -> None:
    """The API's routes, on the sub-application mounted at API_PREFIX (tracker.admin.setup)."""
    r = app.router
    r.add_get("/openapi.json", openapi)
    r.add_get("/messages", list_messages)
    # The bundle route first: a Message-ID may contain '/', so the id pattern is greedy.
    r.add_get("/messages/{message_id:.+}/bundle", bundle)
    law.add_api_routes(r)
    r.add_get("/messages/{message_id:.+}", show_message)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@web.middleware
async def api_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Under /api/v1 every failure is JSON; the client never sees exception text."""
    if not request.path.startswith(API_PREFIX + "/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except NotFoundError as exc:
        return error(404, "not_found", str(exc))
    except AmbiguousError as exc:  # each choice's href names its submission
        choices = [{**c, "href": f"{request.path}?{urlencode({**request.query, 'submission': c['submission_id']})}"}
                   for c in exc.choices]
        return web.json_response({"error": "ambiguous", "message": str(exc), "choices": choices}, status=300)
    except EstampilleError as exc:
        log.error("API request failed: %s", exc)
        return error(503, "unavailable", "the store could not answer; try again")
    except Exception:
        log.exception("API request failed")
        return error(500, "internal", "internal error; see the relay's log")


class BadRequest(Exception):
    """A query parameter is invalid; the message says which and why."""


def parse_time(name: str, value: str | None) -> float | None:
    """An ISO 8601 time (UTC if it has no offset) or Unix seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}={value!r}: expected an ISO 8601 time or Unix seconds") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def parse_int(name: str, value: str | None, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name}={value!r}: expected an integer") from None
    if not low <= number <= high:
        raise BadRequest(f"{name}={number}: expected {low} to {high}")
    return number


async def search(request: web.Request, q: Mapping[str, str]) -> dict[str, Any]:
    """The page of messages the parameters ``q`` ask for (shared by the API and the admin list)."""
    query = q.get("q", "").strip()[:MAX_QUERY]
    since, until = parse_time("since", q.get("since")), parse_time("until", q.get("until"))
    page = parse_int("page", q.get("page"), 1, 1, MAX_PAGE)
    per_page = parse_int("per_page", q.get("per_page"), DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    store = request.config_dict[TRACKER].store
    rows, total = await store.search_submissions(
        query=query, since=since, until=until, limit=per_page, offset=(page - 1) * per_page
    )
    anchoring: dict[str, list[str | None]] = {}
    if rows:
        for d in await store.message_digests([row.id for row in rows]):
            anchoring.setdefault(d.submission_id, []).append(d.batch_state)
    messages = []
    for row in rows:
        states = anchoring.get(row.id, [])
        messages.append(
            {
                "message_id": row.message_id,
                "subject": row.subject,
                "sender": row.mail_from,
                "received_at": iso_time(row.received_at),
                "recipients": row.recipients,
                "delivered": row.delivered,
                "acknowledged": row.acknowledged,
                "records": len(states),
                "anchored": states.count("confirmed"),
                "submission_id": row.id,  # picks this one among messages sharing its Message-ID
                "href": f"{API_PREFIX}/messages/{quote(row.message_id or '', safe='')}?submission={row.id}",
            }
        )
    return {"messages": messages, "page": page, "per_page": per_page, "total": total, "q": query}


async def list_messages(request: web.Request) -> web.Response:
    try:
        return web.json_response(await search(request, request.query))
    except BadRequest as exc:
        return error(400, "bad_request", str(exc))


async def show_message(request: web.Request) -> web.Response:
    ev = await load_message(request.config_dict[TRACKER].store, request.match_info["message_id"],
                            request.query.get("submission") or None)
    return web.json_response(message_json(ev))


async def bundle(request: web.Request) -> web.StreamResponse:
    """The proof bundle of the message in the path, as a zip download (built in a temporary file):
    every copy, or with ``?recipient=`` only that recipient's."""
    tracker = request.config_dict[TRACKER]
    recipient = request.query.get("recipient") or None
    with tempfile.TemporaryFile() as out:
        message_id = await build_proof(
            tracker.store, request.match_info["message_id"], out, now=tracker.clock(),
            timezone=tracker.config.tracker.timezone, recipient=recipient,
            submission_id=request.query.get("submission") or None,
        )
        size = out.tell()
        out.seek(0)
        response = web.StreamResponse(headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{bundle_filename(message_id, recipient)}"',
        })
        response.content_length = size
        await response.prepare(request)
        while chunk := await asyncio.to_thread(out.read, DOWNLOAD_CHUNK):
            await response.write(chunk)
        await response.write_eof()
    return response


def bundle_filename(message_id: str, recipient: str | None = None) -> str:
    bare = message_id.strip("<>") + (f"-{recipient}" if recipient else "")
    return "proof-" + "".join(c if c.isalnum() or c in "._-@" else "_" for c in bare)[:160] + ".zip"



async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_MESSAGE_ID_PARAM = {
    "name": "message_id",
    "in": "path",
    "required": True,
    "description": "The Message-ID, URL-encoded, with or without its angle brackets.",
    "schema": {"type": "string"},
}
_SUBMISSION_PARAM = {
    "name": "submission",
    "in": "query",
    "description": "The submission id picking one of several messages with this Message-ID (answer 300 lists them).",
    "schema": {"type": "string"},
}
_AMBIGUOUS = {
    "description": "Several messages carry this Message-ID: each choice, with its sender and time, and its href.",
    "content": {"application/json": {"schema": _ref("Ambiguous")}},
}
_ERRORS = {
    "401": {"description": "No token, or a wrong one.", "content": {"application/json": {"schema": _ref("Error")}}},
    "404": {"description": "No message with this Message-ID.", "content": {"application/json": {"schema": _ref("Error")}}},
}
# What parse_time accepts, so a client (or a generator) can tell a valid value without trying it.
_TIME = {"anyOf": [{"type": "string", "format": "date-time"},
                   {"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,6})?$"}]}
_NULLABLE_RECORD = {"oneOf": [_ref("Record"), {"type": "null"}]}
# What a message's page and its line in a listing share.
_MESSAGE_HEADING = {
    "message_id": {"type": ["string", "null"]},
    "subject": {"type": ["string", "null"]},
    "sender": {"type": "string"},
    "received_at": {"type": "string", "format": "date-time"},
}
_COUNTS = {k: {"type": "integer"} for k in ("recipients", "delivered", "acknowledged", "records", "anchored")}


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema whose every property is required and nothing else is allowed."""
    return {**schema, "required": list(schema["properties"]), "additionalProperties": False}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Estampille admin API",
        "version": "1",
        "description": "Proofs of sending, delivery and acknowledgment by Message-ID. "
        "Every evidence record is canonical JSON whose SHA-256 is anchored in Bitcoin through OpenTimestamps.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": {
        f"{API_PREFIX}/messages": {
            "get": {
                "summary": "Search messages, newest first",
                "parameters": [
                    {"name": "q", "in": "query", "description": "Part of a Message-ID, subject, sender or recipient.",
                     "schema": {"type": "string", "maxLength": MAX_QUERY}},
                    {"name": "since", "in": "query", "description": "Received at or after (ISO 8601 or Unix seconds).",
                     "schema": _TIME},
                    {"name": "until", "in": "query", "description": "Received before (ISO 8601 or Unix seconds).",
                     "schema": _TIME},
                    {"name": "page", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1}},
                    {"name": "per_page", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE}},
                ],
                "responses": {
                    "200": {"description": "One page of messages.", "content": {"application/json": {"schema": _ref("MessagePage")}}},
                    "400": {"description": "Invalid parameter.", "content": {"application/json": {"schema": _ref("Error")}}},
                    "401": _ERRORS["401"],
                },
            }
        },
        f"{API_PREFIX}/messages/{{message_id}}": {
            "get": {
                "summary": "A message's evidence: submission, and per recipient delivery, hand-off, fetches, acknowledgment",
                "description": "If the application submitted the same Message-ID more than once, pick one with "
                "'submission': without it the answer is 300 and lists them all.",
                "parameters": [_MESSAGE_ID_PARAM, _SUBMISSION_PARAM],
                "responses": {
                    "200": {"description": "The message.", "content": {"application/json": {"schema": _ref("Message")}}},
                    "300": _AMBIGUOUS,
                    **_ERRORS,
                },
            }
        },
        f"{API_PREFIX}/messages/{{message_id}}/bundle": {
            "get": {
                "summary": "The proof bundle (zip), verifiable offline with 'estampille verify'",
                "description": "Building it disables the acknowledgment links of the copies it carries (a "
                "disclosure record lists them): ask for one recipient's bundle to disable only theirs.",
                "parameters": [
                    _MESSAGE_ID_PARAM, _SUBMISSION_PARAM,
                    {"name": "recipient", "in": "query", "schema": {"type": "string"},
                     "description": "Only this recipient's copy (what a disputing member or their lawyer gets)."},
                ],
                "responses": {
                    "200": {"description": "The bundle.",
                            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                    "300": _AMBIGUOUS,
                    **_ERRORS,
                },
            }
        },
        **law.openapi_paths(API_PREFIX, _MESSAGE_ID_PARAM, _ERRORS),
        f"{API_PREFIX}/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1 document."}, "401": _ERRORS["401"]}}
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "An admin token whose SHA-256 is in admin.token_hashes ('estampille admin-token')."}
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            },
            "Anchoring": {
                "type": "object",
                "required": ["state"],
                "description": "queued: waiting for a batch; pending: at the calendars, waiting for a block; "
                "attested: a calendar claims a block (bitcoin_height), not checked against its header yet; "
                "confirmed: in a Bitcoin block, checked against its header.",
                "properties": {
                    "state": {"enum": ["queued", "pending", "attested", "confirmed"]},
                    "calendars": {"type": "array", "items": {"type": "string"}},
                    "bitcoin_height": {"type": ["integer", "null"]},
                    "block_time": {"type": ["string", "null"], "format": "date-time"},
                },
            },
            "Record": {
                "type": "object",
                "required": ["digest", "record", "anchoring"],
                "properties": {
                    "digest": {"type": "string", "description": "SHA-256 of the record's canonical JSON."},
                    "record": {"type": "object", "description": "The evidence record's fields."},
                    "anchoring": _ref("Anchoring"),
                    "tsa": _ref("TSAToken"),
                },
            },
            "TSAToken": {
                "type": "object",
                "required": ["state"],
                "description": "The RFC 3161 token of the record's batch: none (no TSA configured, or not batched"
                " yet); waiting (asked, to be asked again); stamped (checked and stored: the record existed by"
                " time). qualified is what the operator declared of that TSA.",
                "properties": {
                    "state": {"enum": ["none", "waiting", "stamped"]},
                    "tsa": {"type": "string"},
                    "time": {"type": "string", "format": "date-time"},
                    "qualified": {"type": "boolean"},
                },
            },
            "Fetch": _closed({
                "type": "object",
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "method": {"type": "string"},
                    "classification": {"enum": ["scanner", "person"]},
                    "reason": {"type": "string"},
                    "record": _NULLABLE_RECORD,
                },
            }),
            "Report": _closed({
                "type": "object",
                "description": "A delivery status report received for the copy (RFC 3464): what happened at the"
                               " member's server.",
                "properties": {
                    "action": {"enum": ["delivered", "failed", "delayed", "relayed", "expanded"]},
                    "status": {"type": "string", "description": "RFC 3463 status, e.g. 5.1.1."},
                    "remote_mta": {"type": ["string", "null"]},
                    "diagnostic": {"type": ["string", "null"], "description": "The member's server's reply."},
                    "received_at": {"type": "string", "format": "date-time"},
                    "record": _NULLABLE_RECORD,
                },
            }),
            "Recipient": _closed({
                "type": "object",
                "properties": {
                    "recipient": {"type": "string"},
                    "state": {"enum": ["queued", "sending", "deferred", "delivered", "failed"]},
                    "attempts": {"type": "integer"},
                    "last_reply": {"type": ["string", "null"]},
                    "updated_at": {"type": "string", "format": "date-time"},
                    "delivery": _NULLABLE_RECORD,
                    "unlinked_reason": {"type": ["string", "null"],
                                        "description": "Why the copy carries no acknowledgment link (it can never"
                                                       " be acknowledged); null when it carries one or is not made yet."},
                    "handoff": _NULLABLE_RECORD,
                    "earlier_handoffs": {"type": "array", "items": _ref("Record"),
                                         "description": "The upstream's answers to earlier attempts, oldest first."},
                    "fetches": {"type": "array", "items": _ref("Fetch")},
                    "reports": {"type": "array", "items": _ref("Report")},
                    "acknowledgment": {"oneOf": [
                        {"allOf": [_ref("Record"), {"type": "object", "properties": {"at": {"type": "string"}}}]},
                        {"type": "null"},
                    ]},
                    "link_disclosed": {"type": "boolean",
                                       "description": "A bundle carried this copy: its acknowledgment link is refused."},
                    "link_refusals": {"type": "array", "items": _ref("LinkRefusal")},
                },
            }),
            "LinkRefusal": _closed({
                "type": "object",
                "description": "A use of this recipient's link that was refused, and nothing recorded.",
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "method": {"type": "string"},
                    "reason": {"enum": ["disclosed", "expired"]},
                },
            }),
            "Choice": _closed({
                "type": "object",
                "properties": {**_MESSAGE_HEADING, "submission_id": {"type": "string"}},
            }),
            "Ambiguous": _closed({
                "type": "object",
                "properties": {
                    "error": {"const": "ambiguous"},
                    "message": {"type": "string"},
                    "choices": {"type": "array", "items": {"allOf": [
                        _ref("Choice"), {"type": "object", "properties": {"href": {"type": "string"}}}]}},
                },
            }),
            "Disclosure": _closed({
                "type": "object",
                "description": "A bundle built with copies: the digest of its disclosure record (anchored), "
                "its time, its scope (one recipient, or null: all), how many tokens it disabled.",
                "properties": {
                    "digest": {"type": "string"},
                    "at": {"type": "string", "format": "date-time"},
                    "scope": {"type": ["string", "null"]},
                    "tokens": {"type": "integer"},
                },
            }),
            "Message": _closed({
                "type": "object",
                "properties": {
                    **_MESSAGE_HEADING,
                    "submission_id": {"type": "string"},
                    "submission": _NULLABLE_RECORD,
                    "same_message_id": {"type": "array", "items": _ref("Choice"),
                                        "description": "Every message with this Message-ID, this one included."},
                    "disclosures": {"type": "array", "items": _ref("Disclosure")},
                    "recipients": {"type": "array", "items": _ref("Recipient")},
                    "summary": {"type": "object", "properties": _COUNTS},
                },
            }),
            "MessageSummary": _closed({
                "type": "object",
                "properties": {
                    **_MESSAGE_HEADING,
                    **_COUNTS,
                    "submission_id": {"type": "string"},
                    "href": {"type": "string"},
                },
            }),
            **law.SCHEMAS,
            "MessagePage": _closed({
                "type": "object",
                "properties": {
                    "messages": {"type": "array", "items": _ref("MessageSummary")},
                    "page": {"type": "integer"},
                    "per_page": {"type": "integer"},
                    "total": {"type": "integer"},
                    "q": {"type": "string"},
                },
            }),
        },
    },
}
