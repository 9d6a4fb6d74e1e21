"""SMTP intake: aiosmtpd on the relay's own event loop, never an open relay.

Protocol fixes live in :class:`IntakeSMTP` (a subclass of aiosmtpd's SMTP that uses only its
documented extension points: ``smtp_*`` commands, ``push``, ``transport`` and the asyncio
protocol methods); policy lives in :class:`IntakeHandler`, whose hooks (``handle_*`` and
``auth_*``) return explicit replies:

- MAIL: 452 4.3.1 when the data directory is nearly full;
- RCPT: 550 5.7.1 for a client outside ``smtp.allowed_networks`` that has not
  authenticated (nothing is stored for it); mail to ``dsn.bounce_domain`` is the
  reports' own, from anyone, to relay.outbound.bounces (only that domain, never relayed);
- DATA: 550 5.6.0 for a message without a From that has a domain when the
  envelope sender has none to supply it (DKIM must sign From); 550 5.7.0 for a late
  convocation under ``[law] refuse_late`` (relay.smtp.convocation); 250 only after
  the spool has committed; any failure of ours is 451 4.3.0 and the session
  stays usable (aiosmtpd resets the envelope).
- stopping (:meth:`IntakeHandler.drain`): idle sessions get 421 at once,
  sessions in a transaction get 421 after the reply that ends it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, AnyStr, Protocol, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from relay.certify import dkim
from relay.certify.certifier import from_repair
from relay.config import Config
from relay.errors import ConfigError, DiskFullError, EstampilleError, FromFieldError, StoreError
from relay.ratelimit import RateLimiter, client_key
from relay.smtp.auth import Credentials, load_credentials
from relay.smtp.convocation import ConvocationCheck
from relay.smtp.spool import Incoming, Spool

log = logging.getLogger("estampille.intake")

# MAIL and RCPT parameters real MTAs send (RFC 3461 DSN, RFC 4954 AUTH): accepted
# and kept in the envelope's options; aiosmtpd alone answers 555 to them (its issue #367).
ACCEPTED_PARAMS = frozenset({"AUTH", "RET", "ENVID", "NOTIFY", "ORCPT"})
_ACCEPTED_PARAM = re.compile(rf"\s+((?:{'|'.join(sorted(ACCEPTED_PARAMS))})(?:=\S*)?)(?=\s|$)", re.IGNORECASE)
# "FROM:" or "TO:" and the spaces before the path, which ends at its ">" or else at a space.
_PATH_START = re.compile(r"[^:]*:\s*(?=<)|[^:]*:\s*\S*")
# What the email package's address parser (which aiosmtpd uses) raises on paths such as '<',
# 'a@[', '<"': a syntax error of the client's, not a failure of ours.
_PARSER_CRASHES = (IndexError, AttributeError, UnboundLocalError)
# After a DATA, a client that sends several messages starts its next transaction within a few
# round trips: the relay counts as receiving until then (IntakeHandler.receiving).
RECEIVING_GRACE_SECONDS = 0.25
REPLY_QUEUED = "250 2.0.0 Ok: queued as {}"
REPLY_OUR_FAILURE = "451 4.3.0 Temporary failure on our side, please try again later"
REPLY_DISK_FULL = "452 4.3.1 Insufficient system storage, please try again later"
REPLY_NOT_ALLOWED = "550 5.7.1 Relaying denied: authenticate first"
REPLY_NO_DKIM_KEY = "550 5.7.1 This relay does not sign mail from that sender's domain"
REPLY_NO_FROM = ("550 5.6.0 The message has no From: field with a domain, and the envelope sender has none:"
                 " add a From: field with a full address, e.g. From: Mairie <mairie@example.org>")
REPLY_AUTH_THROTTLED = "454 4.7.0 Too many failed authentication attempts, try again later"
REPLY_AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
REPLY_MALFORMED_ADDRESS = "553 5.1.3 Error: malformed address"
REPLY_BAD_USER_NAME = "501 5.5.4 User name with control characters refused"
REPLY_BAD_SENDER = "553 5.1.7 Address with control characters refused"
REPLY_BAD_RECIPIENT = "553 5.1.3 Address with control characters refused"
REPLY_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients, send the rest in another message"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
REPLY_ONE_REPORT = "452 4.5.3 One report per transaction, please"
REPLY_SHUTTING_DOWN = b"421 4.3.2 Service shutting down, please try again later\r\n"
REPLY_TOO_MANY_SESSIONS = b"421 4.7.0 Too many connections from your address, please try again later\r\n"


class IntakeSMTP(SMTP):
    """aiosmtpd's protocol with the fixes Estampille needs (configured per instance)."""

    def __init__(self, handler: IntakeHandler, *, line_length_limit: int, **kwargs: Any) -> None:
        # Read by SMTP.__init__ for the stream limit and by DATA for the per-line check.
        self.line_length_limit = line_length_limit
        self.client: str | None = None  # the client key this session is counted under
        # The DSN and AUTH parameters of the MAIL or RCPT command being read, upper-cased.
        self.dsn_options: list[str] = []
        # AUTH over plaintext is refused per session (IntakeHandler.auth_*), not by aiosmtpd.
        super().__init__(handler, auth_require_tls=False, **kwargs)
        self.intake = handler

    def connection_lost(self, error: Exception | None) -> None:
        if self.client is not None:
            self.intake.session_closed(self.client)
            self.client = None
        self.intake.sessions.discard(self)
        if not self.intake.sessions:
            self.intake.no_sessions.set()
        super().connection_lost(error)

    @property
    def in_transaction(self) -> bool:
        """Between MAIL and the reply to DATA (or RSET): a stop waits for it to end."""
        return self.envelope is not None and self.envelope.mail_from is not None

    def shut(self, reply: bytes = REPLY_SHUTTING_DOWN) -> None:
        """Say 421 and close (RFC 5321 allows 421 at any point when the service stops)."""
        transport = cast(asyncio.WriteTransport | None, self.transport)  # uvloop's does not subclass it
        if transport is not None and not transport.is_closing():
            transport.write(reply)
            transport.close()

    async def push(self, status: AnyStr) -> None:
        # Every reply passes here, aiosmtpd's own (500, 501, 555...) included: metrics count errors.
        if self.intake.on_reply is not None:
            self.intake.on_reply(status if isinstance(status, str) else status.decode("ascii", "replace"))
        await super().push(status)
        if self.intake.draining and not self.in_transaction:
            self.shut()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.session is not None
        if self.client is None:  # counted once: connection_made runs again after STARTTLS
            client = client_key(_ip_text(self.session.peer))
            if not self.intake.session_opened(client):
                self.shut(REPLY_TOO_MANY_SESSIONS)  # before the greeting: the session task never runs
                return
            self.client = client
        self.intake.sessions.add(self)  # called again after STARTTLS: a set keeps one entry
        self.intake.no_sessions.clear()

    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._with_params(super().smtp_MAIL, arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._with_params(super().smtp_RCPT, arg)

    async def _with_params(self, command: Callable[[str | None], Any], arg: str | None) -> None:
        # aiosmtpd answers 555 to the DSN and AUTH parameters real MTAs send (its issue #367):
        # they are taken out of what it parses, and the hooks read them from dsn_options.
        self.dsn_options, arg = _take_dsn_params(arg)
        try:
            await command(arg)
        except _PARSER_CRASHES:
            log.warning("session %s: unparsable path %r", _peer_text(self.session), arg)
            await self.push(REPLY_MALFORMED_ADDRESS)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd would answer 500 (the sender drops the mail) and keep a half envelope.
        log.error("session %s: unexpected %s", _peer_text(self.session), type(error).__name__, exc_info=error)
        self.envelope = Envelope()
        return REPLY_OUR_FAILURE


class ReportTaker(Protocol):
    """Takes delivery status reports at the bounce domain (relay.outbound.bounces, given by the
    service: the intake sits below delivery and does not import it)."""

    def is_report_address(self, address: str) -> bool: ...

    async def check_recipient(self, address: str, recipients: list[str]) -> str: ...

    async def take(self, data: bytes, address: str, client_address: str, now: float) -> str: ...


class IntakeHandler:
    """Policy: who may relay, AUTH, free space, and spooling in DATA."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.time,
        on_reply: Callable[[str], None] | None = None,
        reports: ReportTaker | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.credentials = credentials
        self.clock = clock
        self.on_reply = on_reply
        self.sessions: set[IntakeSMTP] = set()
        self.no_sessions = asyncio.Event()
        self.no_sessions.set()
        self.draining = False
        self._last_queued = -RECEIVING_GRACE_SECONDS  # time.monotonic() of the last DATA answered
        # Read by each new connection, so a reload reaches new sessions and spares open ones.
        self.tls_context = tls_context(config)
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in config.smtp.allowed_networks]
        self.limiter = RateLimiter(config.smtp.auth_failures_per_minute)
        self.open_per_client: Counter[str] = Counter()
        self.min_free_bytes = config.smtp.min_free_disk_mb * 2**20
        self.reports = reports  # None: no bounce domain, every address is refused or relayed as before
        self.law = ConvocationCheck(config.law, spool.store)

    @classmethod
    def from_config(cls, config: Config, spool: Spool, *, clock: Callable[[], float] = time.time,
                    on_reply: Callable[[str], None] | None = None, reports: ReportTaker | None = None) -> IntakeHandler:
        """A handler with the credentials file the configuration names, if any."""
        path = config.smtp.credentials_file
        return cls(config, spool, load_credentials(Path(path)) if path else None, clock, on_reply, reports)

    def reload(self) -> None:
        """Reread the TLS certificate and key and the credentials file (SIGHUP).

        All are read before any is replaced: an unusable file raises ConfigError and
        the current ones stay. Sessions already open keep what they started with.
        """
        context = tls_context(self.config)
        path = self.config.smtp.credentials_file
        credentials = load_credentials(Path(path)) if path else self.credentials
        self.tls_context, self.credentials = context, credentials

    def receiving(self) -> bool:
        """A client is in a transaction, or ended one a moment ago (its next MAIL is on its way)."""
        if time.monotonic() - self._last_queued < RECEIVING_GRACE_SECONDS:
            return True
        return any(session.in_transaction for session in self.sessions)

    async def drain(self, grace: float) -> None:
        """Stop taking mail (the listener is already closed): idle sessions are closed
        now, transactions in progress may finish for ``grace`` seconds, then the rest
        are closed. A message that got no 250 stays the sender's to retry."""
        self.draining = True
        for session in list(self.sessions):
            if not session.in_transaction:
                session.shut()
        try:
            await asyncio.wait_for(self.no_sessions.wait(), grace)
        except TimeoutError:
            log.warning("%d SMTP sessions still in a transaction after %.0fs; closing them", len(self.sessions), grace)
            for session in list(self.sessions):
                session.shut()

    # -- policy helpers ---------------------------------------------------

    def session_opened(self, client: str) -> bool:
        """Count a new session of ``client``; False (and not counted) past smtp.max_sessions_per_client."""
        if self.open_per_client[client] >= self.config.smtp.max_sessions_per_client:
            log.warning("connection from %s refused: %d sessions already open", client, self.open_per_client[client])
            return False
        self.open_per_client[client] += 1
        return True

    def session_closed(self, client: str) -> None:
        self.open_per_client[client] -= 1
        if self.open_per_client[client] <= 0:
            del self.open_per_client[client]

    def plaintext_auth_allowed(self, peer: Any) -> bool:
        return self.config.smtp.auth_plaintext_on_loopback and _is_loopback(peer)

    def is_allowed(self, peer: Any) -> bool:
        address = _ip_of(peer)
        return address is not None and any(address in net for net in self.allowed)

    # aiosmtpd's own auth_PLAIN and auth_LOGIN check passwords synchronously; scrypt is slow,
    # so these run the check in a thread (aiosmtpd calls a handler's auth_* in place of its own).
    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        if (refused := self._auth_refused(server)) is not None:
            return refused
        blob = await _auth_answer(server, args, b"")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:  # authzid NUL authcid NUL passwd (RFC 4616)
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        assert server.session is not None
        return await self.authenticate(server.session, LoginPassword(parts[1], parts[2]))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        if (refused := self._auth_refused(server)) is not None:
            return refused
        login = await _auth_answer(server, args, b"User Name\x00")
        password = await server.challenge_auth(b"Password\x00") if login is not None else None
        if login is None or not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        assert server.session is not None
        return await self.authenticate(server.session, LoginPassword(login, password))

    def _auth_refused(self, server: SMTP) -> AuthResult | None:
        assert server.session is not None
        if server.session.ssl is None and not self.plaintext_auth_allowed(server.session.peer):
            return AuthResult(success=False, handled=False, message=REPLY_AUTH_NEEDS_TLS)
        return None

    async def authenticate(self, session: Session, login: LoginPassword) -> AuthResult:
        peer = _peer_text(session)
        now = self.clock()
        if self.credentials is None:
            return AuthResult(success=False, handled=False)
        # Counted before the check: fifty sessions in parallel get five checks, not fifty.
        if not self.limiter.reserve(peer, now):
            log.warning("AUTH from %s refused: too many failures", peer)
            return AuthResult(success=False, handled=False, message=REPLY_AUTH_THROTTLED)
        user = login.login.decode("utf-8", "replace")
        if _CONTROL.search(user):  # never a real name; in the log it would forge lines
            log.warning("AUTH from %s refused: user name with control characters", peer)
            return AuthResult(success=False, handled=False, message=REPLY_BAD_USER_NAME)
        password = login.password.decode("utf-8", "replace")
        if await asyncio.to_thread(self.credentials.check, user, password):
            self.limiter.release(peer, now)
            log.info("AUTH from %s accepted for user %s", peer, user)
            return AuthResult(success=True, handled=False, auth_data=login)
        log.warning("AUTH from %s refused for user %s", peer, user)
        return AuthResult(success=False, handled=False)

    # -- aiosmtpd hooks -----------------------------------------------------

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        # AUTH needs TLS, unless configured otherwise for loopback clients.
        if self.credentials is None or (session.ssl is None and not self.plaintext_auth_allowed(session.peer)):
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        try:
            self.spool.store.check_free_space(self.min_free_bytes)
        except DiskFullError as exc:
            log.warning("MAIL from %s refused: %s", _peer_text(session), exc)
            return REPLY_DISK_FULL
        if _CONTROL.search(address):  # no MTA would take it: refused now, not deferred for days
            log.warning("MAIL from %s refused: address with control characters", _peer_text(session))
            return REPLY_BAD_SENDER
        if dkim.refuses_sender(self.config.dkim, address):
            log.warning("MAIL from %s refused: no DKIM key signs for <%s>", _peer_text(session), address)
            return REPLY_NO_DKIM_KEY
        envelope.mail_from = address
        envelope.mail_options.extend(_given(server, mail_options))
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if self.reports is not None and (self._report_to(envelope) or self.reports.is_report_address(address)):
            return await self._report_rcpt(envelope, address)
        if not session.authenticated and not self.is_allowed(session.peer):
            log.warning("RCPT from %s refused: not in allowed networks and not authenticated", _peer_text(session))
            return REPLY_NOT_ALLOWED
        if _CONTROL.search(address):
            log.warning("RCPT from %s refused: address with control characters", _peer_text(session))
            return REPLY_BAD_RECIPIENT
        if len(envelope.rcpt_tos) >= self.config.smtp.max_recipients:  # RFC 5321 4.5.3.1.10
            return REPLY_TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        # One entry per recipient (its parameters, space-separated), kept apart for its DSN.
        envelope.rcpt_options.append(" ".join(_given(server, rcpt_options)))
        return "250 2.1.5 Ok"

    async def _report_rcpt(self, envelope: Envelope, address: str) -> str:
        """A report's recipient: alone in its transaction, whoever the client is."""
        assert self.reports is not None
        if self._report_to(envelope) is not None or not self.reports.is_report_address(address):
            return REPLY_ONE_REPORT
        reply = await self.reports.check_recipient(address, envelope.rcpt_tos)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.append("")
        return reply

    def _report_to(self, envelope: Envelope) -> str | None:
        """The return path at the bounce domain a report transaction is for; None for any other."""
        if self.reports is None or len(envelope.rcpt_tos) != 1:
            return None
        return envelope.rcpt_tos[0] if self.reports.is_report_address(envelope.rcpt_tos[0]) else None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        report_to = self._report_to(envelope)
        if self.reports is not None and report_to is not None:
            try:
                return await self.reports.take(envelope.original_content or b"", report_to,
                                               _ip_text(session.peer), self.clock())
            except Exception:
                log.exception("report from %s not recorded", _peer_text(session))
                return REPLY_OUR_FAILURE
        try:
            from_added = from_repair(envelope.original_content or b"", _reverse_path(envelope.mail_from))
        except FromFieldError as exc:  # a copy DKIM verifiers must reject is never signed nor sent
            log.warning("DATA from %s refused: %s", _peer_text(session), exc)
            return REPLY_NO_FROM
        except Exception:  # a parser's surprise is our failure: 451, never aiosmtpd's 500
            log.exception("DATA from %s: the From field could not be read", _peer_text(session))
            return REPLY_OUR_FAILURE
        try:
            incoming = self._incoming(server, session, envelope, from_added)
            now = self.clock()
            convocation = await self.law.read(incoming, now)
            refused = self.law.refusal(convocation, _peer_text(session))
            if refused is not None:
                return refused
            queued = await self.spool.accept(incoming, now, also=self.law.rows(convocation, now))
        except Exception as exc:
            level = logging.WARNING if isinstance(exc, StoreError) else logging.ERROR
            log.log(level, "DATA from %s not queued: %s", _peer_text(session), type(exc).__name__,
                    exc_info=not isinstance(exc, StoreError))
            return REPLY_OUR_FAILURE
        finally:
            self._last_queued = time.monotonic()
        log.info(
            "queued %s from %s mail_from=<%s> rcpts=%d size=%d message_id=%s",
            queued.submission_id, _peer_text(session), incoming.mail_from, len(incoming.recipients),
            len(incoming.data), queued.facts.message_id,
        )
        if from_added is not None:
            log.warning("queued %s had no From with a domain: its copies get From: %s", queued.submission_id, from_added)
        self.law.accepted(convocation, queued)
        return REPLY_QUEUED.format(queued.submission_id)

    def _incoming(self, server: SMTP, session: Session, envelope: Envelope, from_added: str | None) -> Incoming:
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        return Incoming(
            data=envelope.original_content or b"",
            mail_from=_reverse_path(envelope.mail_from),
            recipients=tuple(envelope.rcpt_tos),
            rcpt_options=tuple(tuple(options.split()) for options in envelope.rcpt_options),
            mail_options=tuple(envelope.mail_options),
            client_address=_ip_text(session.peer),
            auth_user=login.decode("utf-8", "replace") if isinstance(login, bytes) else None,
            tls=_tls_text(session),
            from_added=from_added,
        )


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The STARTTLS context from smtp.tls_cert and smtp.tls_key, or None when not configured."""
    if not config.smtp.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.smtp.tls_cert, config.smtp.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"smtp.tls_cert = {config.smtp.tls_cert!r}, smtp.tls_key = {config.smtp.tls_key!r}: cannot load them ({exc})"
        ) from exc
    return context


class _NoLoginDataWarning(logging.Filter):
    """aiosmtpd's own AUTH code sets the deprecated ``Session.login_data`` after every login and
    warns about itself each time; we never read it, so the warning is noise in the operator's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Session.login_data is deprecated")


_LOGIN_DATA_FILTER = _NoLoginDataWarning()


async def start_intake(config: Config, spool: Spool, *, credentials: Credentials | None = None,
                       host: str | None = None, port: int | None = None,
                       handler: IntakeHandler | None = None) -> asyncio.Server:
    """Listen on the relay's own loop; port 0 picks a free port (read it from the server's sockets)."""
    if handler is None:
        handler = (IntakeHandler(config, spool, credentials) if credentials is not None
                   else IntakeHandler.from_config(config, spool))
    loop = asyncio.get_running_loop()
    logging.getLogger("mail.log").addFilter(_LOGIN_DATA_FILTER)  # once: a filter is added only once

    def factory() -> IntakeSMTP:
        return IntakeSMTP(
            handler,
            line_length_limit=config.smtp.max_line_length,
            data_size_limit=config.smtp.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.smtp.hostname,
            ident="Estampille",
            tls_context=handler.tls_context,
            timeout=config.smtp.timeout,
            loop=loop,
        )

    address = (host or config.smtp.listen_host, config.smtp.listen_port if port is None else port)
    try:
        return await loop.create_server(factory, *address)
    except OSError as exc:  # port taken, or below 1024 without CAP_NET_BIND_SERVICE
        raise EstampilleError(f"SMTP intake cannot listen on {address[0]}:{address[1]}: {exc.strerror}") from exc


def _take_dsn_params(arg: str | None) -> tuple[list[str], str | None]:
    """The DSN and AUTH parameters after a MAIL or RCPT path (upper-cased, as aiosmtpd gives
    parameters to the hooks), and the argument without them."""
    if arg is None:
        return [], arg
    path = _PATH_START.match(arg)
    path_end = path.end() if path else 0
    if path is not None and arg.startswith("<", path_end):
        path_end = arg.find(">", path_end) + 1 or len(arg)
    head, tail = arg[:path_end], arg[path_end:]
    taken = [found.upper() for found in _ACCEPTED_PARAM.findall(tail)]
    return taken, head + _ACCEPTED_PARAM.sub("", tail) if taken else arg


def _given(server: SMTP, options: list[str]) -> list[str]:
    """The parameters aiosmtpd parsed, then those IntakeSMTP took out before it did."""
    return [*options, *server.dsn_options] if isinstance(server, IntakeSMTP) else options


async def _auth_answer(server: SMTP, args: list[str], challenge: bytes) -> bytes | None:
    """The client's base64 answer given with AUTH, or to ``challenge``; None once answered with an error."""
    if len(args) == 1:
        answer = await server.challenge_auth(challenge)
        return answer if isinstance(answer, bytes) else None
    try:
        return base64.b64decode(args[1], validate=True)
    except binascii.Error:
        await server.push("501 5.5.2 Can't decode base64")
        return None


def _reverse_path(mail_from: str | None) -> str:
    """The MAIL FROM address, '' for the null sender (aiosmtpd keeps it as '<>')."""
    return "" if not mail_from or mail_from == "<>" else mail_from


def _ip_of(peer: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(peer[0] if isinstance(peer, tuple) else peer)
    except (ValueError, TypeError, IndexError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_loopback(peer: Any) -> bool:
    address = _ip_of(peer)
    return address is not None and address.is_loopback


def _ip_text(peer: Any) -> str:
    address = _ip_of(peer)
    return str(address) if address is not None else str(peer)


def _peer_text(session: Session | None) -> str:
    return _ip_text(session.peer) if session is not None else "?"


def _tls_text(session: Session) -> str | None:
    info = session.ssl
    if not info:
        return None
    cipher = info.get("cipher") if isinstance(info, dict) else None
    return f"{cipher[1]} {cipher[0]}" if cipher else "TLS"
