"""Convocation law on the tracker (docs/convocations.md): each message's deadline, on-time status
per member and register wording, in the API and on the admin pages; an admin setting or
correcting a meeting date (an evidence record each time); the upcoming meetings.

Routes (added by tracker.api.add_routes and tracker.admin.setup, before their greedy
``/messages/{message_id}`` routes):

- ``GET /api/v1/messages/{id}/convocation``: the register view (relay.law.register.view);
- ``PUT /api/v1/messages/{id}/convocation``: ``{"meeting": "2026-12-15T18:30" | null,
  "urgent": false, "installation": false, "set_by": "name"}``, answers the new view;
- ``POST /admin/messages/{id}/convocation``: the same from the message page's form;
- ``GET /admin/meetings``: meetings of the next UPCOMING_DAYS days.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web

from relay.errors import NotFoundError
from relay.evidence.records import iso_time
from relay.french import french_date, french_time
from relay.law import register, verdict
from relay.law.dates import MeetingDate
from relay.law.deadline import paris_date
from relay.law.evidence import MAX_NAME, meeting_record
from relay.law.meeting import Convocation, assembly_for, header_date
from relay.outbound.reminders import Reminders
from relay.proof.gather import MessageEvidence, load_message, message_json
from relay.smtp.spool import Spool
from relay.store import Store
from relay.store import law as law_store
from tracker.admin_auth import ADMIN_PREFIX
from tracker.pages import TRACKER, Tracker, page_language

log = logging.getLogger("estampille.law")

UPCOMING_DAYS = 30
MAX_BODY = 4096  # bytes of a PUT body: three short fields

TEXTS: dict[str, dict[str, str]] = {
    "fr": {
        "convocation": "Convocation",
        "meetings": "Séances à venir",
        "meetings_intro": "Séances des {days} prochains jours, avec leurs convocations.",
        "no_meetings": "Aucune séance connue dans les {days} prochains jours.",
        "meeting": "Séance",
        "meeting_unknown": "Date de séance inconnue",
        "status_late": "Hors délai",
        "status_on_time": "Dans les délais",
        "status_unknown": "Délai non vérifié",
        "deadline": "Délai légal",
        "deadline_text": "{days} jour(s) franc(s) (article {article} du CGCT) : envoi au plus tard le {latest}",
        "urgent": "urgence",
        "sent_days": "Jours francs entre l'envoi et la séance",
        "wording": "Mention pour le registre des délibérations",
        "member": "Membre",
        "delivered_in_time": "Remis dans les délais",
        "ack_in_time": "Accusé dans les délais",
        "yes": "oui",
        "no": "non",
        "not_yet": "pas encore",
        "set_title": "Fixer ou corriger la date de la séance",
        "set_date": "Date et heure de la séance (AAAA-MM-JJ ou AAAA-MM-JJTHH:MM ; vide : inconnue)",
        "set_urgent": "Délai abrégé pour urgence",
        "set_installation": "Première séance après le renouvellement général du conseil (L. 2121-7 : 3 jours francs)",
        "installation": "séance d'installation",
        "set_by": "Votre nom (consigné dans la preuve)",
        "set_button": "Enregistrer",
        "set_bad": "Date invalide, ou nom manquant : rien n'a été enregistré.",
        "acknowledged": "Accusés",
        "at_risk": "Membres sans accusé de réception",
        "source_header": "en-tête X-Meeting-Date",
        "source_rule": "règle de l'expéditeur",
        "source_subject": "objet du message",
        "source_text": "texte du message",
        "source_admin": "fixée par un administrateur",
        "reminders": "Rappels",
        "ev_reminder": "Rappel mis en file (message certifié distinct, même lien)",
        "remind_button": "Envoyer un rappel maintenant aux membres qui n'ont pas accusé réception",
        "reminded": "Rappels mis en file : {n}.",
    },
    "en": {
        "convocation": "Convocation",
        "meetings": "Upcoming meetings",
        "meetings_intro": "Meetings of the next {days} days, with their convocations.",
        "no_meetings": "No meeting known in the next {days} days.",
        "meeting": "Meeting",
        "meeting_unknown": "Meeting date unknown",
        "status_late": "Late",
        "status_on_time": "On time",
        "status_unknown": "Deadline not checked",
        "deadline": "Legal notice",
        "deadline_text": "{days} jour(s) franc(s) (CGCT article {article}): to be sent by {latest}",
        "urgent": "urgency",
        "sent_days": "Whole days between sending and meeting",
        "wording": "Wording for the register of deliberations (French)",
        "member": "Member",
        "delivered_in_time": "Delivered in time",
        "ack_in_time": "Acknowledged in time",
        "yes": "yes",
        "no": "no",
        "not_yet": "not yet",
        "set_title": "Set or correct the meeting date",
        "set_date": "Meeting date and time (YYYY-MM-DD or YYYY-MM-DDTHH:MM; empty: unknown)",
        "set_urgent": "Notice shortened for urgency",
        "set_installation": "First meeting after a general election (L. 2121-7: 3 jours francs)",
        "installation": "installation meeting",
        "set_by": "Your name (recorded in the proof)",
        "set_button": "Save",
        "set_bad": "Invalid date, or no name: nothing was saved.",
        "acknowledged": "Acknowledged",
        "at_risk": "Members without acknowledgment",
        "source_header": "X-Meeting-Date header",
        "source_rule": "sender's rule",
        "source_subject": "message subject",
        "source_text": "message text",
        "source_admin": "set by an administrator",
        "reminders": "Reminders",
        "ev_reminder": "Reminder queued (a certified message of its own, same link)",
        "remind_button": "Send a reminder now to the members who have not acknowledged",
        "reminded": "Reminders queued: {n}.",
    },
}


class BadSetting(ValueError):
    """A meeting date or a name an admin gave cannot be used; the message says why."""


def add_api_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/messages/{message_id:.+}/convocation", api_get)
    router.add_put("/messages/{message_id:.+}/convocation", api_put)


def add_admin_routes(router: web.UrlDispatcher) -> None:
    """The form's POST; the meetings page is tracker.admin's (its layout), over meetings_context."""
    router.add_post("/messages/{message_id:.+}/convocation", admin_set)
    router.add_post("/messages/{message_id:.+}/remind", admin_remind)


# -- the model -----------------------------------------------------------------


def parse_meeting(value: str) -> MeetingDate | None:
    """An admin's meeting date: '' is unknown; else ISO 8601 (a date, or a date and time in Paris)."""
    value = value.strip()
    if not value:
        return None
    found = header_date(value)
    if found is None:
        raise BadSetting(f"meeting={value!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM")
    return dataclasses.replace(found, source="admin")


async def current(tracker: Tracker, submission: dict[str, Any]) -> Convocation:
    """The convocation as stored; for a message stored without one (before [law] was set), none known."""
    stored = await law_store.convocation(tracker.store, submission["id"])
    if stored is not None:
        return stored.convocation
    return Convocation(
        meeting=None,
        assembly=assembly_for(tracker.config.law, submission["mail_from"]),
        urgent=False,
        received=dt.datetime.fromtimestamp(submission["received_at"], dt.UTC),
    )


def _now(tracker: Tracker) -> dt.datetime:
    return dt.datetime.fromtimestamp(tracker.clock(), dt.UTC)


async def message_view(tracker: Tracker, ev: MessageEvidence, message: dict[str, Any]) -> dict[str, Any]:
    """The register view of one message (``message``: its message_json)."""
    convocation = await current(tracker, ev.submission)
    return register.view(convocation, await _members(tracker, ev, message), _now(tracker))


async def _members(tracker: Tracker, ev: MessageEvidence, message: dict[str, Any]) -> list[register.Member]:
    return register.members_of(message, await law_store.reminders_of(tracker.store, ev.submission["id"]))


async def set_meeting(
    tracker: Tracker,
    ev: MessageEvidence,
    meeting: MeetingDate | None,
    *,
    urgent: bool,
    installation: bool,
    set_by: str,
    via: str,
) -> None:
    """Store the new meeting date, urgency and installation flag, with the evidence record of the
    change, in one transaction."""
    set_by = set_by.strip()
    if not set_by or len(set_by) > MAX_NAME:
        raise BadSetting(f"set_by: expected a name of 1 to {MAX_NAME} characters")
    submission = ev.submission
    old = await current(tracker, submission)
    new = dataclasses.replace(old, meeting=meeting, urgent=urgent, installation=installation)
    now = tracker.clock()
    record = meeting_record(
        submission=submission["record_digest"], old=old, new=new, set_by=set_by, via=via, set_at=iso_time(now)
    )

    async def work(db: Any) -> None:
        await law_store.save_convocation(db, submission["id"], new, now)
        await Store.insert_record(db, record, submission_id=submission["id"], now=now)
        if new.late and not old.late:
            names = {"submission_id": submission["id"], "message_id": submission["message_id"]}
            payload = verdict.event(new, **names, subject=submission["subject"])
            await tracker.store.enqueue_event(db, "convocation.late", payload, now)

    await tracker.store.write(work)
    log.info(
        "meeting of %s set by %s via %s: %s -> %s (record %s)",
        submission["id"],
        set_by,
        via,
        old.meeting.isoformat() if old.meeting else "unknown",
        meeting.isoformat() if meeting else "unknown",
        record.digest,
    )


# -- the API -------------------------------------------------------------------


async def api_get(request: web.Request) -> web.Response:
    tracker = request.config_dict[TRACKER]
    ev = await load_message(tracker.store, request.match_info["message_id"])
    return web.json_response(await message_view(tracker, ev, message_json(ev)))


async def api_put(request: web.Request) -> web.Response:
    tracker = request.config_dict[TRACKER]
    ev = await load_message(tracker.store, request.match_info["message_id"])
    try:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise BadSetting(f"body: expected at most {MAX_BODY} bytes")
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("meeting", ""), (str, type(None))):
            raise BadSetting(
                'body: expected {"meeting": "YYYY-MM-DD[THH:MM]" or null, "urgent": bool, "installation": bool,'
                ' "set_by": name}'
            )
        urgent, installation = body.get("urgent", False), body.get("installation", False)
        set_by = body.get("set_by")
        if not isinstance(urgent, bool) or not isinstance(installation, bool) or not isinstance(set_by, str):
            raise BadSetting("urgent, installation: expected true or false; set_by: expected a name")
        meeting = parse_meeting(body.get("meeting") or "")
        await set_meeting(tracker, ev, meeting, urgent=urgent, installation=installation, set_by=set_by, via="api")
    except (BadSetting, ValueError) as exc:  # ValueError: a body that is not JSON
        message = str(exc) if isinstance(exc, BadSetting) else "body: expected a JSON object"
        return web.json_response({"error": "bad_request", "message": message}, status=400)
    return web.json_response(await message_view(tracker, ev, message_json(ev)))


SCHEMAS: dict[str, Any] = {
    "Convocation": {
        "type": "object",
        "required": [
            "meeting",
            "assembly",
            "urgent",
            "installation",
            "deadline",
            "status",
            "received_at",
            "full_days_before_meeting",
            "members",
            "wording",
        ],
        "additionalProperties": False,
        "properties": {
            "meeting": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["date", "time", "source"],
                        "additionalProperties": False,
                        "properties": {
                            "date": {"type": "string", "format": "date"},
                            "time": {"type": ["string", "null"]},
                            "source": {"enum": ["header", "rule", "subject", "text", "admin"]},
                        },
                    },
                ]
            },
            "assembly": {"type": ["string", "null"]},
            "urgent": {"type": "boolean"},
            "installation": {"type": "boolean", "description": "The first meeting after a general election."},
            "deadline": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["jours_francs", "latest_sending_date", "article"],
                        "additionalProperties": False,
                        "properties": {
                            "jours_francs": {"type": "integer"},
                            "latest_sending_date": {"type": "string", "format": "date"},
                            "article": {"type": "string"},
                        },
                    },
                ]
            },
            "status": {
                "enum": ["late", "on_time", "unknown"],
                "description": "unknown: no meeting date, or no assembly configured for the sender.",
            },
            "received_at": {"type": "string", "format": "date-time"},
            "full_days_before_meeting": {"type": ["integer", "null"]},
            "members": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "recipient",
                        "delivered_at",
                        "acknowledged_at",
                        "delivered_in_time",
                        "acknowledged_in_time",
                        "reminders",
                    ],
                    "properties": {
                        "recipient": {"type": "string"},
                        "delivered_at": {"type": ["string", "null"], "format": "date-time"},
                        "acknowledged_at": {"type": ["string", "null"], "format": "date-time"},
                        "delivered_in_time": {"type": ["boolean", "null"]},
                        "acknowledged_in_time": {"type": ["boolean", "null"]},
                        "reminders": {
                            "type": "array",
                            "items": {"type": "string", "format": "date-time"},
                            "description": "When reminders were queued to the member, oldest first.",
                        },
                    },
                },
            },
            "wording": {"type": "string", "description": "The paragraph for the register of deliberations (French)."},
        },
    },
    "MeetingSetting": {
        "type": "object",
        "required": ["set_by"],
        "additionalProperties": False,
        "properties": {
            "meeting": {
                "type": ["string", "null"],
                "description": "YYYY-MM-DD or YYYY-MM-DDTHH:MM (Paris); null: unknown.",
            },
            "urgent": {"type": "boolean", "default": False},
            "installation": {
                "type": "boolean",
                "default": False,
                "description": "The first meeting after a general election (L2121-7: 3 jours francs in every commune).",
            },
            "set_by": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        },
    },
}


def openapi_paths(api_prefix: str, message_id_param: dict[str, Any], errors: dict[str, Any]) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Convocation"}
    ok = {
        "description": "The convocation: deadline, status, members, wording.",
        "content": {"application/json": {"schema": ref}},
    }
    return {
        f"{api_prefix}/messages/{{message_id}}/convocation": {
            "get": {
                "summary": "A message's convocation: meeting date, deadline in jours francs, on-time status per member,"
                " and the wording for the register of deliberations",
                "parameters": [message_id_param],
                "responses": {"200": ok, **errors},
            },
            "put": {
                "summary": "Set or correct the meeting date and urgency; an evidence record (who, when, old, new) is anchored",
                "parameters": [message_id_param],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MeetingSetting"}}},
                },
                "responses": {
                    "200": ok,
                    "400": {
                        "description": "Invalid setting.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                    **errors,
                },
            },
        }
    }


# -- the admin pages -------------------------------------------------------------


def page_context(
    tracker: Tracker, law: dict[str, Any], lang: str, href: str, query: Mapping[str, str]
) -> dict[str, Any]:
    """What the message page's convocation section shows (template admin_law.html); ``query``: the
    page's, which says how the last form went (law=bad, reminded=N)."""
    deadline = law["deadline"]
    reminded = query.get("reminded", "")
    return {
        "law": law,
        "l": TEXTS[lang],
        "law_action": f"{href}/convocation",
        "law_failed": query.get("law") == "bad",
        "remind_action": f"{href}/remind" if tracker.config.reminders.enabled else None,
        "reminded": int(reminded) if reminded.isdigit() else None,
        "meeting_text": _meeting_text(law["meeting"], lang),
        "latest_text": french_date(dt.date.fromisoformat(deadline["latest_sending_date"]))
        if deadline and lang == "fr"
        else (deadline["latest_sending_date"] if deadline else ""),
    }


def _meeting_text(meeting: dict[str, Any] | None, lang: str) -> str:
    if meeting is None:
        return TEXTS[lang]["meeting_unknown"]
    day = dt.date.fromisoformat(meeting["date"])
    text = french_date(day) if lang == "fr" else day.strftime("%A %d %B %Y")
    if meeting["time"]:
        text += (
            f" à {french_time(dt.time.fromisoformat(meeting['time']))}"
            if lang == "fr"
            else f" {meeting['time']}"
        )
    return f"{text} ({TEXTS[lang]['source_' + meeting['source']]})"


def reminder_events(law: dict[str, Any], recipient: str, lang: str) -> list[dict[str, str]]:
    """The reminders queued to one member, as events of the admin page's timeline."""
    member = next((m for m in law["members"] if m["recipient"] == recipient), None)
    return [
        {"at": iso_time(dt.datetime.fromisoformat(at).timestamp()), "what": TEXTS[lang]["ev_reminder"], "detail": "",
         "anchor": ""}
        for at in (member["reminders"] if member else ())
    ]  # fmt: skip


async def admin_set(request: web.Request) -> web.Response:
    tracker = request.config_dict[TRACKER]
    try:
        ev = await load_message(tracker.store, request.match_info["message_id"])
    except NotFoundError:
        raise web.HTTPNotFound() from None
    form = await request.post()
    href = f"{tracker.base_path}{ADMIN_PREFIX}/messages/{quote(ev.submission['message_id'] or '', safe='')}"
    try:
        meeting = parse_meeting(str(form.get("meeting", "")))
        await set_meeting(
            tracker,
            ev,
            meeting,
            urgent=form.get("urgent") == "1",
            installation=form.get("installation") == "1",
            set_by=str(form.get("set_by", "")),
            via="admin",
        )
    except BadSetting:
        raise web.HTTPSeeOther(f"{href}?law=bad#convocation") from None
    raise web.HTTPSeeOther(f"{href}#convocation")


async def admin_remind(request: web.Request) -> web.Response:
    """The message page's button: one reminder now to each member who has not acknowledged."""
    tracker = request.config_dict[TRACKER]
    if not tracker.config.reminders.enabled:
        raise web.HTTPNotFound()
    try:
        ev = await load_message(tracker.store, request.match_info["message_id"])
    except NotFoundError:
        raise web.HTTPNotFound() from None
    sent = await Reminders(tracker.config, tracker.store, Spool(tracker.store), tracker.clock).send_now(
        ev.submission["id"]
    )
    href = f"{tracker.base_path}{ADMIN_PREFIX}/messages/{quote(ev.submission['message_id'] or '', safe='')}"
    raise web.HTTPSeeOther(f"{href}?reminded={sent}#convocation")


async def meetings_context(request: web.Request) -> dict[str, Any]:
    """The upcoming meetings page's context: each convocation of the next UPCOMING_DAYS days, its
    status, its acknowledgments and the members who have not acknowledged (at risk)."""
    tracker = request.config_dict[TRACKER]
    lang = page_language(request)
    now = _now(tracker)
    today = paris_date(now)
    rows = []
    for stored in await law_store.meetings_between(tracker.store, today, today + dt.timedelta(days=UPCOMING_DAYS)):
        ev = await load_message(tracker.store, stored.message_id or "")
        if ev.submission["id"] != stored.submission_id:
            continue  # the same Message-ID sent again: the latest submission is the one shown
        message = message_json(ev)
        law = register.view(stored.convocation, await _members(tracker, ev, message), now)
        rows.append(
            {
                "subject": stored.subject,
                "sender": stored.sender,
                "href": f"{tracker.base_path}{ADMIN_PREFIX}/messages/{quote(stored.message_id or '', safe='')}",
                "meeting_text": _meeting_text(law["meeting"], lang),
                "law": law,
                "acknowledged": message["summary"]["acknowledged"],
                "recipients": message["summary"]["recipients"],
                "at_risk": [m["recipient"] for m in law["members"] if m["acknowledged_at"] is None],
            }
        )
    return {"l": TEXTS[lang], "rows": rows, "days": UPCOMING_DAYS}
