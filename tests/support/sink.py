"""A recording SMTP upstream for tests: aiosmtpd on 127.0.0.1, on the test's own loop.

Usage::

    async with Sink() as sink:                      # port 0: a free port is chosen
        config = ... upstream.port = sink.port ...
        sink.script("b@example.net", ["451 4.3.0 busy", "250 2.0.0 Ok: queued as ABC"])
        sink.reply = lambda envelope: "550 5.1.1 no such user" if ... else None
        ...
        got = await sink.wait_for(3)                # the first 3 messages accepted, or a timeout error
        got[0].mail_from, got[0].rcpt_tos, got[0].data

Replies are chosen at DATA: first the next scripted reply of the envelope's first
recipient, then ``reply(envelope)`` if it returns a string, else ``default``. Addresses in
``refuse_rcpt`` are refused at RCPT with their reply (and never reach DATA).
Only messages answered 2xx are in ``messages``; every DATA is in ``attempts``.
Stop and restart on the same port with ``await sink.stop()`` / ``await sink.start()``.
``Sink(tls=context)`` offers STARTTLS; ``Sink(tls=context, credentials={"user": "pw"})``
also requires AUTH. ``Sink(max_sessions=N)`` greets an (N+1)th simultaneous session with 421
and closes it, as an MTA limiting connections per client does. With ``refuse_at="MAIL"`` it
greets that session and answers its every MAIL with ``LIMIT_REPLY`` (Exchange Online's reply for
a fourth connection of a mailbox); with ``refuse_at="DATA"``, its every message at the end of DATA.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

DEFAULT_REPLY = "250 2.0.0 Ok: queued as SINK{n}"
LIMIT_REPLY = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
WAIT_SECONDS = 20.0


@dataclass(frozen=True)
class Received:
    """One DATA transaction as the sink saw it."""

    mail_from: str  # '' for the null sender <>
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...]
    reply: str


def free_port() -> int:
    """A port nobody listens on right now (for 'upstream down' tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sink:
    port: int = 0
    host: str = "127.0.0.1"
    default: str = DEFAULT_REPLY
    reply: Callable[[Envelope], str | None] | None = None
    messages: list[Received] = field(default_factory=list)
    attempts: list[Received] = field(default_factory=list)
    tls: ssl.SSLContext | None = None  # offer STARTTLS with this server context
    credentials: dict[str, str] | None = None  # require AUTH (after STARTTLS) with these users
    refuse_rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply at RCPT
    connections: int = 0  # SMTP sessions opened, in all
    max_sessions: int = 0  # sessions at once; more are refused (0: no limit)
    refuse_at: str = "greeting"  # where a session over max_sessions is refused: greeting, MAIL, DATA
    open_sessions: int = 0  # sessions within the limit: only those accept a message
    most_sessions: int = 0  # the most open at once
    refused_sessions: int = 0
    slow_ehlo: float = 0.0  # seconds admitted sessions after the first take to answer EHLO
    _scripts: dict[str, deque[str]] = field(default_factory=lambda: defaultdict(deque))
    _server: asyncio.Server | None = None
    _changed: asyncio.Condition | None = None

    def script(self, recipient: str, replies: list[str]) -> None:
        """Answer DATA for ``recipient`` with these replies, in order, then fall back."""
        self._scripts[recipient.lower()].extend(replies)

    async def start(self) -> Sink:
        self._changed = self._changed or asyncio.Condition()
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {"tls_context": self.tls}
        if self.credentials is not None:
            options.update(auth_required=True, authenticator=self._authenticate)

        def session() -> asyncio.Protocol:
            if self.max_sessions and self.open_sessions >= self.max_sessions:
                self.refused_sessions += 1
                if self.refuse_at == "greeting":
                    return _TooMany()
                return _OverLimit(self, hostname="sink.test", enable_SMTPUTF8=True, loop=loop, **options)
            self.connections += 1
            self.open_sessions += 1
            self.most_sessions = max(self.most_sessions, self.open_sessions)
            slow = self.slow_ehlo if self.connections > 1 else 0.0
            return _CountedSMTP(self, slow, hostname="sink.test", enable_SMTPUTF8=True, loop=loop, **options)

        self._server = await loop.create_server(session, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def __aenter__(self) -> Sink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[Received]:
        """The accepted messages once there are at least ``count`` of them."""
        assert self._changed is not None
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.messages) >= count), timeout)
        return list(self.messages)

    def to(self, recipient: str) -> list[Received]:
        """Accepted messages whose envelope names ``recipient``."""
        return [m for m in self.messages if recipient in m.rcpt_tos]

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.lower() in self.refuse_rcpt:
            return self.refuse_rcpt[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = LIMIT_REPLY if isinstance(server, _OverLimit) else self._choose(envelope)
        received = Received(
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            mail_options=tuple(envelope.mail_options),
            reply=reply,
        )
        assert self._changed is not None
        async with self._changed:
            self.attempts.append(received)
            if reply.startswith("2"):
                self.messages.append(received)
            self._changed.notify_all()
        return reply

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert self.credentials is not None
        ok = isinstance(auth_data, LoginPassword) and self.credentials.get(
            auth_data.login.decode()) == auth_data.password.decode()
        return AuthResult(success=ok)

    def _choose(self, envelope: Envelope) -> str:
        first = (envelope.rcpt_tos or [""])[0].lower()
        if self._scripts.get(first):
            return self._scripts[first].popleft()
        if self.reply is not None:
            chosen = self.reply(envelope)
            if chosen is not None:
                return chosen
        return self.default.format(n=len(self.attempts) + 1)


class _CountedSMTP(SMTP):
    """An aiosmtpd session that tells its sink when it ends (and may be slow to answer EHLO)."""

    def __init__(self, sink: Sink, slow_ehlo: float, **options: Any) -> None:
        super().__init__(sink, **options)
        self._sink = sink
        self._slow_ehlo = slow_ehlo

    async def smtp_EHLO(self, hostname: str) -> None:
        await asyncio.sleep(self._slow_ehlo)
        await super().smtp_EHLO(hostname)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sink.open_sessions -= 1
        super().connection_lost(exc)


class _OverLimit(SMTP):
    """A session over the sink's limit, greeted: refused at MAIL, or at the end of DATA
    (``Sink.handle_DATA``). It stays open, as Exchange Online's does."""

    def __init__(self, sink: Sink, **options: Any) -> None:
        super().__init__(sink, **options)
        self._refuse_mail = sink.refuse_at == "MAIL"

    async def smtp_MAIL(self, arg: str) -> None:
        if self._refuse_mail:
            await self.push(LIMIT_REPLY)
        else:
            await super().smtp_MAIL(arg)


class _TooMany(asyncio.Protocol):
    """A session over the sink's limit: refused at the greeting."""

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        transport.write(b"421 4.7.0 Too many connections from your address\r\n")
        transport.close()
