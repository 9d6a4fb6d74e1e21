"""Admin pages: the messages with search, one message's recipients and their
timelines, the members who have not acknowledged (CSV), the proof bundle.

Server-rendered on the acknowledgment pages' base template, French by default,
English by Accept-Language. Every page but the login form needs a session
(``tracker.admin_auth``); :func:`setup` adds these pages and the API to the
tracker application, as sub-applications behind the guard.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Set as AbstractSet
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from aiohttp import web

from relay.errors import AmbiguousError, NotFoundError
from relay.proof.gather import MessageEvidence, load_message, message_json
from relay.store.openings import own_openings
from tracker import api, law
from tracker.admin_auth import (
    ADMIN_PREFIX,
    ADMIN_SESSIONS,
    API_PREFIX,
    COOKIE,
    LOGIN_PATH,
    TOKEN_HASHES,
    Sessions,
    clear_session_cookie,
    require_admin,
    set_session_cookie,
    token_ok,
)
from tracker.i18n import format_time
from tracker.pages import TRACKER, page_language, render

MAX_TOKEN_FIELD = 200  # characters accepted in the login form's token field

TEXTS: dict[str, dict[str, str]] = {
    "fr": {
        "admin": "Administration",
        "login_title": "Connexion à l'administration",
        "login_intro": "Saisissez un jeton d'administration (créé avec « estampille admin-token »).",
        "token": "Jeton d'administration",
        "login": "Se connecter",
        "login_failed": "Ce jeton n'est pas reconnu.",
        "logout": "Se déconnecter",
        "messages": "Messages",
        "meetings": "Séances à venir",
        "search": "Rechercher",
        "search_label": "Message-ID, objet, expéditeur ou destinataire",
        "since": "Reçus depuis le",
        "until": "jusqu'au (inclus)",
        "no_results": "Aucun message ne correspond.",
        "subject": "Objet",
        "sent": "Envoyé le",
        "sender": "Expéditeur",
        "recipients": "Destinataires",
        "delivered": "Remis",
        "acknowledged": "Accusés de réception",
        "anchored": "Ancrés dans Bitcoin",
        "previous": "Page précédente",
        "next": "Page suivante",
        "page": "Page {page} sur {pages} ({total} messages)",
        "ack_bar": "Accusés de réception : {acknowledged} sur {total}",
        "timeline": "Chronologie par destinataire",
        "unacknowledged": "Membres n'ayant pas accusé réception",
        "everyone_acknowledged": "Tous les destinataires ont accusé réception.",
        "csv": "Exporter en CSV",
        "bundle": "Télécharger le dossier de preuve (zip)",
        "bundle_note": "Un dossier contient les copies envoyées, avec leur lien d'accusé de réception : "
        "ces liens sont désactivés dès qu'il est établi. Pour un membre qui conteste, préférez son dossier.",
        "bundle_one": "Dossier de preuve de ce destinataire (zip)",
        "choose_title": "Plusieurs messages portent ce Message-ID",
        "choose_intro": "Choisissez le message voulu : chacun a son expéditeur et son heure de réception.",
        "same_message_id": "Autres messages portant ce Message-ID",
        "ev_disclosed": "Lien désactivé : la copie figure dans un dossier de preuve",
        "ev_refused_disclosed": "Lien refusé (désactivé par un dossier de preuve)",
        "ev_refused_expired": "Lien refusé (expiré)",
        "back": "Retour à la liste",
        "ev_received": "Reçu par le relais",
        "ev_certified": "Copie certifiée et signée",
        "ev_attempt": "Tentative de remise",
        "ev_handoff": "Remis au serveur de messagerie",
        "ev_handoff_4": "Refusé pour l'instant par le serveur de messagerie",
        "ev_handoff_5": "Refusé définitivement par le serveur de messagerie",
        # Delivery status reports (issue 27): what the member's own server did with the copy.
        "ev_report_delivered": "Remis au serveur du destinataire",
        "ev_report_relayed": "Remis au serveur du destinataire",
        "ev_report_expanded": "Remis au serveur du destinataire (liste)",
        "ev_report_delayed": "Retardé avant le serveur du destinataire",
        "ev_report_failed": "Rejeté par le serveur du destinataire",
        "ev_fetch_person": "Lien ouvert (probablement une personne)",
        "ev_fetch_scanner": "Lien ouvert (probablement un filtre de sécurité)",
        "ev_fetch_own": "Lien ouvert par le destinataire (le même navigateur a ensuite accusé réception)",
        "ev_ack": "Accusé de réception",
        "anchor_confirmed": "ancré dans Bitcoin, bloc {height}",
        "anchor_pending": "horodatage en attente de confirmation",
        "anchor_attested": "bloc {height} annoncé par un calendrier, non vérifié",
        "anchor_queued": "en attente d'horodatage",
        "tsa_stamped": "horodatage RFC 3161 de {tsa} le {time}",
        "tsa_qualified": "horodatage qualifié (déclaré) de {tsa} le {time}",
        "tsa_waiting": "jeton RFC 3161 demandé, en attente",
        "state_queued": "en attente",
        "state_sending": "en cours d'envoi",
        "state_deferred": "différé",
        "state_delivered": "remis",
        "state_failed": "échec",
        "ack_yes": "accusé le {time}",
        "ack_no": "pas d'accusé de réception",
        "unlinked": "copie sans lien d'accusé : {reason}",
        "no_subject": "(sans objet)",
    },
    "en": {
        "admin": "Administration",
        "login_title": "Administration sign-in",
        "login_intro": "Enter an admin token (created with 'estampille admin-token').",
        "token": "Admin token",
        "login": "Sign in",
        "login_failed": "This token is not recognised.",
        "logout": "Sign out",
        "messages": "Messages",
        "meetings": "Upcoming meetings",
        "search": "Search",
        "search_label": "Message-ID, subject, sender or recipient",
        "since": "Received from",
        "until": "until (included)",
        "no_results": "No message matches.",
        "subject": "Subject",
        "sent": "Sent",
        "sender": "Sender",
        "recipients": "Recipients",
        "delivered": "Delivered",
        "acknowledged": "Acknowledged",
        "anchored": "Anchored in Bitcoin",
        "previous": "Previous page",
        "next": "Next page",
        "page": "Page {page} of {pages} ({total} messages)",
        "ack_bar": "Acknowledged: {acknowledged} of {total}",
        "timeline": "Timeline per recipient",
        "unacknowledged": "Members who have not acknowledged",
        "everyone_acknowledged": "Every recipient has acknowledged.",
        "csv": "Export as CSV",
        "bundle": "Download the proof bundle (zip)",
        "bundle_note": "A bundle holds the copies sent, with their acknowledgment links: those links are "
        "disabled as soon as it is built. For a member who disputes, prefer their own bundle.",
        "bundle_one": "This recipient's proof bundle (zip)",
        "choose_title": "Several messages carry this Message-ID",
        "choose_intro": "Choose the message you mean: each has its sender and time of receipt.",
        "same_message_id": "Other messages with this Message-ID",
        "ev_disclosed": "Link disabled: the copy is in a proof bundle",
        "ev_refused_disclosed": "Link refused (disabled by a proof bundle)",
        "ev_refused_expired": "Link refused (expired)",
        "back": "Back to the list",
        "ev_received": "Received by the relay",
        "ev_certified": "Copy certified and signed",
        "ev_attempt": "Delivery attempt",
        "ev_handoff": "Handed to the mail server",
        "ev_handoff_4": "Refused for now by the mail server",
        "ev_handoff_5": "Refused for good by the mail server",
        "ev_report_delivered": "Delivered to the recipient's server",
        "ev_report_relayed": "Delivered to the recipient's server",
        "ev_report_expanded": "Delivered to the recipient's server (list)",
        "ev_report_delayed": "Delayed before the recipient's server",
        "ev_report_failed": "Refused by the recipient's server",
        "ev_fetch_person": "Link opened (likely a person)",
        "ev_fetch_scanner": "Link opened (likely a security scanner)",
        "ev_fetch_own": "Link opened by the recipient (the same browser then acknowledged receipt)",
        "ev_ack": "Acknowledgment of receipt",
        "anchor_confirmed": "anchored in Bitcoin, block {height}",
        "anchor_pending": "timestamp waiting for confirmation",
        "anchor_attested": "block {height} claimed by a calendar, not verified",
        "anchor_queued": "waiting to be timestamped",
        "tsa_stamped": "RFC 3161 timestamp by {tsa} at {time}",
        "tsa_qualified": "qualified timestamp (declared) by {tsa} at {time}",
        "tsa_waiting": "RFC 3161 token asked for, waiting",
        "state_queued": "queued",
        "state_sending": "sending",
        "state_deferred": "deferred",
        "state_delivered": "delivered",
        "state_failed": "failed",
        "ack_yes": "acknowledged on {time}",
        "ack_no": "not acknowledged",
        "unlinked": "copy without an acknowledgment link: {reason}",
        "no_subject": "(no subject)",
    },
}


def setup(app: web.Application) -> None:
    """Add the admin pages (/admin) and the API (/api/v1) to the tracker application (from
    tracker.app.make_app), each as a sub-application guarded by its own middlewares: the
    acknowledgment pages, on the main application, do not pass through them."""
    tracker = app[TRACKER]
    app[TOKEN_HASHES] = tuple(tracker.config.admin.token_hashes)
    app[ADMIN_SESSIONS] = Sessions(clock=tracker.clock)
    api_app = web.Application(middlewares=[require_admin, api.api_errors])
    api.add_routes(api_app)
    app.add_subapp(API_PREFIX, api_app)
    pages = web.Application(middlewares=[require_admin])
    r = pages.router  # paths below ADMIN_PREFIX
    login_path = LOGIN_PATH.removeprefix(ADMIN_PREFIX)
    r.add_get(login_path, login_form)
    r.add_post(login_path, login)
    r.add_post("/logout", logout)
    r.add_get("", to_list)
    r.add_get("/", messages)
    r.add_get("/meetings", meetings)
    law.add_admin_routes(r)  # before the greedy message route
    r.add_get("/messages/{message_id:.+}/bundle", bundle)
    r.add_get("/messages/{message_id:.+}/unacknowledged.csv", unacknowledged_csv)
    r.add_get("/messages/{message_id:.+}", message_page)
    app.add_subapp(ADMIN_PREFIX, pages)


def _page(request: web.Request, template: str, context: dict[str, Any], *, status: int = 200) -> web.Response:
    lang = page_language(request)
    base = request.config_dict[TRACKER].base_path
    context = {"a": TEXTS[lang], "admin_css": f"{base}/static/admin.css", "admin_base": f"{base}{ADMIN_PREFIX}", **context}
    return render(request, template, context, status=status)


async def to_list(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(f"{request.config_dict[TRACKER].base_path}{ADMIN_PREFIX}/")


def message_href(request: web.Request, message_id: str | None, submission_id: str | None = None) -> str:
    """A message's page; with ``submission_id``, that one among messages sharing the Message-ID."""
    path = f"{request.config_dict[TRACKER].base_path}{ADMIN_PREFIX}/messages/{quote(message_id or '', safe='')}"
    return path + (f"?{urlencode({'submission': submission_id})}" if submission_id else "")


# -- login -------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    return _page(request, "admin_login.html", {"failed": False})


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    token = str(form.get("token", ""))[:MAX_TOKEN_FIELD].strip()
    if not token_ok(token, request.config_dict[TOKEN_HASHES]):
        return _page(request, "admin_login.html", {"failed": True}, status=401)
    tracker = request.config_dict[TRACKER]
    response = web.HTTPSeeOther(f"{tracker.base_path}{ADMIN_PREFIX}/")
    secure = tracker.config.tracker.public_url.startswith("https://")
    set_session_cookie(response, request.config_dict[ADMIN_SESSIONS].create(), secure=secure)
    raise response


async def logout(request: web.Request) -> web.Response:
    request.config_dict[ADMIN_SESSIONS].drop(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther(request.config_dict[TRACKER].base_path + LOGIN_PATH)
    clear_session_cookie(response)
    raise response


# -- pages -------------------------------------------------------------------


async def messages(request: web.Request) -> web.Response:
    tracker = request.config_dict[TRACKER]
    lang = page_language(request)
    tz = tracker.config.tracker.timezone
    since, until = request.query.get("since", ""), request.query.get("until", "")
    try:
        params = {**request.query, "since": _day_start(since, tz, 0), "until": _day_start(until, tz, 1)}
        found = await api.search(request, params)
    except (api.BadRequest, ValueError):
        raise web.HTTPBadRequest() from None
    rows = [
        {**m, "href": message_href(request, m["message_id"], m["submission_id"]), "sent": _time(m["received_at"], tz, lang)}
        for m in found["messages"]
    ]
    pages = max(1, -(-found["total"] // found["per_page"]))
    filters = urlencode({"q": found["q"], "since": since, "until": until})
    return _page(request, "admin_messages.html",
                 {**found, "rows": rows, "pages": pages, "since": since, "until": until, "filters": filters})


def _day_start(day: str, tz: str, offset_days: int) -> str:
    """Unix seconds of midnight in ``tz`` on ``day`` (YYYY-MM-DD) plus ``offset_days``: the form's
    'until' day is included. '' for no day; ValueError for a malformed one."""
    if not day:
        return ""
    start = datetime.combine(date.fromisoformat(day) + timedelta(days=offset_days), time(), ZoneInfo(tz))
    return str(int(start.timestamp()))


async def message_page(request: web.Request) -> web.Response:
    tracker = request.config_dict[TRACKER]
    try:
        ev = await _message(request)
    except AmbiguousError as exc:
        return _choose(request, exc)
    view = message_json(ev)
    lang = page_language(request)
    a = TEXTS[lang]
    tz = tracker.config.tracker.timezone
    page = message_href(request, view["message_id"])
    chosen = {"submission": view["submission_id"]}
    law_view = await law.message_view(tracker, ev, view)
    own = await own_openings(tracker.store, view["submission_id"], tracker.config.tracker.scanner_window)
    recipients = [
        {**r, "timeline": timeline(view, r, a, tz, lang, law.reminder_events(law_view, r["recipient"], lang), own),
         "ack_time": _time(_ack_at(r), tz, lang),
         "bundle_href": f"{page}/bundle?{urlencode({**chosen, 'recipient': r['recipient']})}"}
        for r in view["recipients"]
    ]
    others = [{**c, "href": message_href(request, c["message_id"], c["submission_id"]),
               "sent": _time(c["received_at"], tz, lang)}
              for c in view["same_message_id"] if c["submission_id"] != view["submission_id"]]
    return _page(
        request,
        "admin_message.html",
        {
            **law.page_context(tracker, law_view, lang, page, request.query),
            "m": view,
            "sent": _time(view["received_at"], tz, lang),
            "recipients": recipients,
            "missing": [r for r in recipients if not r["acknowledgment"]],
            "others": others,
            "bundle_href": f"{page}/bundle?{urlencode(chosen)}",
            "csv_href": f"{page}/unacknowledged.csv?{urlencode({**chosen, **({'lang': 'en'} if lang == 'en' else {})})}",
        },
    )


async def meetings(request: web.Request) -> web.Response:
    return _page(request, "admin_meetings.html", await law.meetings_context(request))


async def _message(request: web.Request) -> MessageEvidence:
    """The message named in the path (and ``?submission=``); an unknown one is the 404 page.
    AmbiguousError when several messages carry the Message-ID (the handler lists them)."""
    try:
        return await load_message(request.config_dict[TRACKER].store, request.match_info["message_id"],
                                  request.query.get("submission") or None)
    except NotFoundError:
        raise web.HTTPNotFound() from None


def _choose(request: web.Request, exc: AmbiguousError) -> web.Response:
    """The messages that share a Message-ID, each with its sender and time, to pick one (300)."""
    lang = page_language(request)
    tz = request.config_dict[TRACKER].config.tracker.timezone
    choices = [{**c, "href": message_href(request, c["message_id"], c["submission_id"]),
                "sent": _time(c["received_at"], tz, lang)} for c in exc.choices]
    return _page(request, "admin_choose.html", {"choices": choices}, status=300)


async def bundle(request: web.Request) -> web.StreamResponse:
    """The API's bundle download, with the admin pages' 404 for an unknown message or a missing file."""
    try:
        return await api.bundle(request)
    except NotFoundError:
        raise web.HTTPNotFound() from None
    except AmbiguousError as exc:
        return _choose(request, exc)


def _ack_at(recipient: dict[str, Any]) -> str | None:
    return recipient["acknowledgment"]["at"] if recipient["acknowledgment"] else None


def _time(iso: str | None, tz: str, lang: str) -> str:
    if not iso:
        return ""
    return format_time(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp(), tz, lang)


def _anchor_text(record: dict[str, Any] | None, a: dict[str, str], tz: str, lang: str) -> str:
    """The record's RFC 3161 token, if its batch has one or asked for one, then its Bitcoin anchoring."""
    if record is None:
        return ""
    anchoring = record["anchoring"]
    if anchoring["state"] in ("confirmed", "attested"):
        bitcoin = a[f"anchor_{anchoring['state']}"].format(height=anchoring["bitcoin_height"])
    else:
        bitcoin = a[f"anchor_{anchoring['state']}"]
    token = record.get("tsa", {"state": "none"})
    if token["state"] == "waiting":
        return f"{a['tsa_waiting']} · {bitcoin}"
    if token["state"] == "stamped":
        text = a["tsa_qualified" if token["qualified"] else "tsa_stamped"].format(
            tsa=token["tsa"], time=_time(token["time"], tz, lang))
        return f"{text} · {bitcoin}"
    return bitcoin


def timeline(view: dict[str, Any], r: dict[str, Any], a: dict[str, str], tz: str, lang: str,
             extra: list[dict[str, str]] | None = None, own: AbstractSet[str] = frozenset()) -> list[dict[str, str]]:
    """One recipient's events, oldest first: received, certified, handed over, fetches (those in
    ``own``, by record digest, shown as the recipient's own opening), acknowledged, link disabled by
    a bundle, link refused, and ``extra`` ones (the reminders, tracker.law.reminder_events)."""
    events = [{"at": view["received_at"], "what": a["ev_received"], "detail": "", "anchor": _anchor_text(view["submission"], a, tz, lang)}]
    if r["delivery"]:
        events.append({"at": r["delivery"]["record"]["certified_at"], "what": a["ev_certified"],
                       "detail": r["delivery"]["record"]["copy_sha256"][:16] + "…", "anchor": _anchor_text(r["delivery"], a, tz, lang)})
    for handoff in [*r["earlier_handoffs"], *([r["handoff"]] if r["handoff"] else [])]:
        h = handoff["record"]
        what = a.get(f"ev_handoff_{str(h['code'])[:1]}", a["ev_handoff"])  # each answer: 2xx, 4xx or 5xx
        events.append({"at": h["handed_at"], "what": what, "detail": f"{h['code']} {h['text']}",
                       "anchor": _anchor_text(handoff, a, tz, lang)})
    last_handoff = r["handoff"] and f"{r['handoff']['record']['code']} {r['handoff']['record']['text']}"
    if r["last_reply"] and r["last_reply"] != last_handoff:  # an attempt that got no answer leaves no hand-off
        events.append({"at": r["updated_at"], "what": a["ev_attempt"], "detail": r["last_reply"], "anchor": ""})
    for report in r.get("reports", ()):
        detail = report["diagnostic"] or report["status"]
        if report["remote_mta"]:
            detail = f"{report['remote_mta']} : {detail}"
        events.append({"at": report["received_at"], "what": a[f"ev_report_{report['action']}"], "detail": detail,
                       "anchor": _anchor_text(report["record"], a, tz, lang)})
    for f in r["fetches"]:
        mine = f["record"] is not None and f["record"]["digest"] in own
        events.append({"at": f["at"], "what": a["ev_fetch_own" if mine else f"ev_fetch_{f['classification']}"],
                       "detail": f["method"],
                       "anchor": _anchor_text(f["record"], a, tz, lang)})
    if r["acknowledgment"]:
        events.append({"at": r["acknowledgment"]["at"], "what": a["ev_ack"], "detail": "",
                       "anchor": _anchor_text(r["acknowledgment"], a, tz, lang)})
    for x in r["link_refusals"]:
        events.append({"at": x["at"], "what": a[f"ev_refused_{x['reason']}"], "detail": x["method"], "anchor": ""})
    if r["link_disclosed"]:
        first = min(d["at"] for d in view["disclosures"] if d["scope"] in (None, r["recipient"]))
        events.append({"at": first, "what": a["ev_disclosed"], "detail": "", "anchor": ""})
    events.extend(extra or ())
    events.sort(key=lambda e: e["at"])
    return [{**e, "when": _precise_time(e["at"], tz, lang)} for e in events]


def _precise_time(iso: str, tz: str, lang: str) -> str:
    """To the second: a timeline's events often fall within the same minute."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(tz))
    return f"{moment:%d/%m/%Y %H:%M:%S}" if lang == "fr" else f"{moment:%Y-%m-%d %H:%M:%S}"


# French Excel splits cells on ';' and shows the authority's local time; '?lang=en' gives the
# English form (',' and UTC times, states as the API names them) for other programs.
CSV_FORMS = {
    "fr": (";", ["destinataire", "état", "dernière réponse", "remis le", "ouvertures du lien"]),
    "en": (",", ["recipient", "state", "last_reply", "handed_at", "fetches"]),
}


async def unacknowledged_csv(request: web.Request) -> web.Response:
    """The recipients without an acknowledgment, with their delivery state."""
    try:
        ev = await _message(request)
    except AmbiguousError as exc:
        return _choose(request, exc)
    view = message_json(ev)
    lang = "en" if request.query.get("lang") == "en" else "fr"
    tz = request.config_dict[TRACKER].config.tracker.timezone
    delimiter, header = CSV_FORMS[lang]
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    for r in view["recipients"]:
        if not r["acknowledgment"]:
            handed = r["handoff"]["record"]["handed_at"] if r["handoff"] else ""
            state = r["state"] if lang == "en" else TEXTS["fr"][f"state_{r['state']}"]
            writer.writerow([_csv_safe(r["recipient"]), state, _csv_safe(r["last_reply"] or ""),
                             handed if lang == "en" or not handed else _precise_time(handed, tz, "fr"),
                             len(r["fetches"])])
    name = api.bundle_filename(view["message_id"]).replace("proof-", "unacknowledged-").replace(".zip", ".csv")
    return web.Response(
        body=out.getvalue().encode("utf-8-sig"),  # the BOM makes spreadsheet programs read UTF-8
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _csv_safe(value: str) -> str:
    """Spreadsheets run cells starting with these as formulas; an address or reply never needs them."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value

