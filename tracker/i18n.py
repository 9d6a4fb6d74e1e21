"""Page language and wording: French by default, English when the browser prefers it.

Pure: the caller passes the Accept-Language header and the time zone.
"""

from __future__ import annotations

import functools
from datetime import datetime
from zoneinfo import ZoneInfo

DEFAULT_LANGUAGE = "fr"
LANGUAGES = ("fr", "en")
MAX_LANGUAGE_RANGES = 20  # ignore the tail of absurdly long headers

_FR_DAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
_FR_MONTHS = (
    "janvier", "février", "mars", "avril", "mai", "juin",
    "juillet", "août", "septembre", "octobre", "novembre", "décembre",
)
_EN_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EN_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)

TEXTS: dict[str, dict[str, str]] = {
    "fr": {
        "site": "Estampille",
        "ack_title": "Accusé de réception",
        "ack_intro": "Vous avez reçu le message ci-dessous. Confirmez que vous l'avez bien reçu.",
        "ack_next": "Après votre confirmation, vous accéderez au document.",
        "from": "Expéditeur",
        "subject": "Objet",
        "sent": "Envoyé le",
        "to": "Destinataire",
        "no_subject": "(sans objet)",
        "button": "J'accuse réception",
        "button_continue": "Accéder au document",
        "ack_note": "Votre confirmation est horodatée et conservée comme preuve de réception.",
        "done_title": "Réception confirmée",
        "done_new": "Votre accusé de réception a été enregistré le {time}.",
        "done_before": "Vous avez déjà accusé réception de ce message le {time}.",
        "not_found_title": "Lien introuvable",
        "not_found_text": "Ce lien d'accusé de réception n'existe pas. "
        "Vérifiez qu'il a été copié en entier depuis le message.",
        "token_expired_title": "Lien expiré",
        "token_expired_text": "Ce lien d'accusé de réception a expiré : il n'est plus possible d'accuser "
        "réception par ce lien. Rien n'a été enregistré. Adressez-vous à l'expéditeur du message.",
        "token_disclosed_title": "Lien désactivé",
        "token_disclosed_text": "Ce lien d'accusé de réception a été désactivé : il figure dans un dossier "
        "de preuve remis à un tiers. Rien n'a été enregistré. Adressez-vous à l'expéditeur du message.",
        "forbidden_title": "Demande refusée",
        "forbidden_text": "Cette confirmation ne vient pas de la page d'accusé de réception. "
        "Rouvrez le lien reçu par courriel et utilisez le bouton.",
        "too_many_title": "Trop de tentatives",
        "too_many_text": "Trop de liens inconnus depuis votre adresse. Réessayez dans une minute.",
        "error_title": "Service momentanément indisponible",
        "error_text": "Une erreur est survenue de notre côté. Réessayez dans quelques minutes.",
        "method_title": "Méthode non autorisée",
        "method_text": "Cette adresse n'accepte pas ce type de demande.",
    },
    "en": {
        "site": "Estampille",
        "ack_title": "Acknowledgment of receipt",
        "ack_intro": "You received the message below. Please confirm that you received it.",
        "ack_next": "After you confirm, you will be taken to the document.",
        "from": "From",
        "subject": "Subject",
        "sent": "Sent",
        "to": "To",
        "no_subject": "(no subject)",
        "button": "I acknowledge receipt",
        "button_continue": "Go to the document",
        "ack_note": "Your confirmation is timestamped and kept as proof of receipt.",
        "done_title": "Receipt confirmed",
        "done_new": "Your acknowledgment of receipt was recorded on {time}.",
        "done_before": "You already acknowledged receipt of this message on {time}.",
        "not_found_title": "Link not found",
        "not_found_text": "This acknowledgment link does not exist. "
        "Check that it was copied in full from the message.",
        "token_expired_title": "Link expired",
        "token_expired_text": "This acknowledgment link has expired: receipt can no longer be acknowledged "
        "through it. Nothing was recorded. Please contact the sender of the message.",
        "token_disclosed_title": "Link disabled",
        "token_disclosed_text": "This acknowledgment link was disabled: it is part of a proof bundle handed "
        "to a third party. Nothing was recorded. Please contact the sender of the message.",
        "forbidden_title": "Request refused",
        "forbidden_text": "This confirmation did not come from the acknowledgment page. "
        "Open the link from the email again and use the button.",
        "too_many_title": "Too many attempts",
        "too_many_text": "Too many unknown links from your address. Try again in a minute.",
        "error_title": "Service temporarily unavailable",
        "error_text": "Something went wrong on our side. Try again in a few minutes.",
        "method_title": "Method not allowed",
        "method_text": "This address does not accept this kind of request.",
    },
}


@functools.lru_cache(maxsize=512)  # browsers send a handful of distinct headers; pages ask several times
def negotiate(accept_language: str | None) -> str:
    """The supported language the header prefers most (RFC 9110 quality values); French otherwise."""
    best, best_q = DEFAULT_LANGUAGE, 0.0
    for item in (accept_language or "").split(",")[:MAX_LANGUAGE_RANGES]:
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGUAGES:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q:  # strictly greater: on equal weights the earlier range wins
            best, best_q = primary, q
    return best


@functools.lru_cache(maxsize=4096)  # every recipient of a message shows the same sending time
def format_time(timestamp: float, tz: str, lang: str) -> str:
    """A Unix time as a reader expects it, in ``tz``: 'dimanche 29 novembre 2026 à 06:37 (Europe/Paris)'."""
    moment = datetime.fromtimestamp(timestamp, tz=ZoneInfo(tz))
    clock = f"{moment:%H:%M}"
    if lang == "fr":
        day = "1er" if moment.day == 1 else str(moment.day)
        date = f"{_FR_DAYS[moment.weekday()]} {day} {_FR_MONTHS[moment.month - 1]} {moment.year}"
        return f"{date} à {clock} ({tz})"
    date = f"{_EN_DAYS[moment.weekday()]} {moment.day} {_EN_MONTHS[moment.month - 1]} {moment.year}"
    return f"{date} at {clock} ({tz})"
