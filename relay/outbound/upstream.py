"""The outbound MTA: where certified copies are handed over, one envelope each.

``make_upstream(config)`` gives an :class:`SMTPUpstream` (aiosmtplib, a pool of reused
connections that keeps to what the MTA allows) or a :class:`MaildirUpstream` (a directory
standing in for the MTA). Each ``send`` returns the :class:`Reply` that the delivery worker
(relay.outbound.deliver) classifies and records; nothing here touches the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosmtplib

from relay.config import Config, UpstreamConfig
from relay.outbound.budget import Budget
from relay.outbound.verp import StatusRequest

log = logging.getLogger("estampille.upstream")

# After the upstream refuses a new connection while others are open, the pool keeps to those
# this long before it tries to grow again (SMTPUpstream).
POOL_SHRINK_SECONDS = 600.0
_QUEUE_ID = re.compile(r"(?:queued as|queue id|id=|\bid\b)\s*[:=]?\s*<?([A-Za-z0-9][A-Za-z0-9._@-]{2,})>?", re.I)


@dataclass(frozen=True)
class Reply:
    """What the upstream answered; ``code`` is None when it could not be reached."""

    code: int | None
    text: str
    upstream_host: str
    tls: str | None = None
    queue_id: str | None = None

    @property
    def line(self) -> str:
        """For logs: the code and text, or why no code came."""
        return f"{self.code} {self.text}" if self.code is not None else f"no answer: {self.text}"


def too_many_connections(reply: Reply) -> bool:
    """Whether ``reply`` may say the client has too many connections open: 421 (Postfix, Exim,
    before or after the greeting), or 432 / 4.3.2 (Exchange Online's client submission)."""
    return reply.code in (421, 432) or (reply.code is not None and 400 <= reply.code < 500
                                        and reply.text.startswith("4.3.2"))


def parse_queue_id(text: str) -> str | None:
    """The upstream's queue id from a reply such as '2.0.0 Ok: queued as 4Xk3Zt1QvPz'."""
    found = _QUEUE_ID.search(text or "")
    return found.group(1) if found else None


class Upstream(Protocol):
    """Where copies go: an SMTP server, or a directory standing in for one."""

    eight_bit_mime: bool  # the upstream takes 8-bit bodies (8BITMIME): certify may leave 8-bit parts as they are

    async def send(self, sender: str, recipient: str, data: bytes, mail_options: list[str],
                   status: StatusRequest | None = None) -> Reply:
        """Hand over one copy; ``status``: the delivery status to ask for (RFC 3461), when the
        upstream offers DSN."""
        ...

    async def close(self) -> None: ...


class SMTPUpstream:
    """aiosmtplib to the outbound MTA, a small pool of reused connections, one envelope per call.

    An MTA may allow fewer connections per client than ``upstream.connections`` (an Exchange
    receive connector allows 20 per source address by default, some allow fewer). When it
    refuses a new one (at connection, greeting, EHLO, STARTTLS or AUTH) while others are open,
    the pool keeps to those for POOL_SHRINK_SECONDS, and the delivery waits for one of them
    rather than being deferred for delivery.retry_first. Some say so only to the first
    transaction of a new connection (Exchange Online's client submission allows 3 per mailbox
    and answers the end of DATA of a fourth '432 4.3.2 ... sender thread limit exceeded'):
    such a reply (``too_many_connections``) counts as the same refusal, and the copy is sent
    again on one of the others, as the MTA accepted none of it.
    """

    def __init__(self, config: UpstreamConfig, helo_name: str) -> None:
        self.config = config
        self.helo_name = config.helo_name or helo_name
        self._idle: list[aiosmtplib.SMTP] = []
        self._active: set[aiosmtplib.SMTP] = set()  # connections taken for a transaction
        self._connecting = 0  # connections being opened
        self._opened = asyncio.Condition()  # notified when an attempt to open one ends
        self._slots = Budget(max(1, config.connections))
        self._shrunk_until = 0.0
        self.eight_bit_mime = False  # learnt from the upstream's EHLO at the first transaction

    async def send(self, sender: str, recipient: str, data: bytes, mail_options: list[str],
                   status: StatusRequest | None = None) -> Reply:
        while True:
            if self._shrunk_until and time.monotonic() >= self._shrunk_until:
                self._shrunk_until = 0.0
                self._slots.resize(max(1, self.config.connections))
            await self._slots.take(1)
            try:
                try:
                    taken = await self._client()
                except aiosmtplib.SMTPResponseException as exc:
                    # Refused before any envelope (greeting, EHLO, STARTTLS, AUTH): a problem between
                    # us and our upstream, not with this recipient, so never a permanent failure.
                    return Reply(None, f"connection refused by upstream: {exc.code} {exc.message}", self.config.host)
                except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                    return Reply(None, f"{type(exc).__name__}: {exc}", self.config.host, None)
                except Exception as exc:
                    log.exception("unexpected error connecting to %s", self.config.host)
                    return Reply(None, f"local error while connecting: {type(exc).__name__}", self.config.host, None)
                if taken is None:
                    continue  # refused while others are open: wait for one of them
                client, new = taken
                try:
                    reply = await self._send_on(client, new, sender, recipient, data, mail_options, status)
                finally:
                    self._active.discard(client)
                if reply is not None:
                    return reply
                # its first transaction was refused as one too many: wait for another likewise
            finally:
                self._slots.give_back(1)

    async def _client(self) -> tuple[aiosmtplib.SMTP, bool] | None:
        """An open connection, taken (in ``_active``): an idle one, or a new one (then True). None
        when the upstream refused a new one while others are open (the pool now keeps to those);
        raises when it refused the only one."""
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                self._active.add(client)
                return client, False
        self._connecting += 1
        try:
            client = await self._connect()
            self._active.add(client)
            return client, True
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            refusal = exc
        finally:
            self._connecting -= 1
            async with self._opened:
                self._opened.notify_all()
        if await self._keep_to_others(str(refusal)):
            return None
        raise refusal

    async def _keep_to_others(self, refusal: str) -> bool:
        """After the upstream refused a new connection: False if no other is open; else True, and
        the pool keeps to the others for POOL_SHRINK_SECONDS."""
        # Others being opened at the same moment may yet succeed: counted once all are done, or a
        # slow one (its greeting, EHLO or TLS still in progress) would set the pool below the limit.
        async with self._opened:
            await self._opened.wait_for(lambda: not self._connecting)
        others = self._open()
        if not others:
            return False
        if self._slots.total > others:
            log.warning("the upstream %s refused connection %d (%s): keeping to %d for %.0f s",
                        self.config.host, others + 1, one_line(refusal), others, POOL_SHRINK_SECONDS)
            self._slots.resize(others)
        self._shrunk_until = time.monotonic() + POOL_SHRINK_SECONDS
        return True

    def _open(self) -> int:
        return sum(1 for c in (*self._active, *self._idle) if c.is_connected)

    async def _send_on(self, client: aiosmtplib.SMTP, new: bool, sender: str, recipient: str, data: bytes,
                       mail_options: list[str], status: StatusRequest | None) -> Reply | None:
        """The upstream's reply; None when it refused the first transaction of this ``new``
        connection as one too many while others are open (then closed)."""
        try:
            reply = await self._transaction(client, sender, recipient, data, mail_options, status)
            self.eight_bit_mime = client.supports_extension("8bitmime")
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            self._discard(client)
            return Reply(None, f"{type(exc).__name__}: {exc}", self.config.host, None)
        except Exception as exc:
            log.exception("unexpected error sending to %s", self.config.host)
            self._discard(client)
            return Reply(None, f"local error while sending: {type(exc).__name__}", self.config.host, None)
        if new and too_many_connections(reply):
            self._active.discard(client)  # not one of the others
            if await self._keep_to_others(f"{reply.code} {reply.text}"):
                self._discard(client)
                return None
        if client.is_connected and reply.code != 421:
            self._idle.append(client)
        else:
            self._discard(client)
        return reply

    async def _transaction(self, client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes,
                           mail_options: list[str], status: StatusRequest | None) -> Reply:
        tls = _tls_of(client)
        rcpt_options: list[str] = []
        if status is not None and client.supports_extension("dsn"):
            mail_options = [*mail_options, *status.mail_options]
            rcpt_options = status.rcpt_options
        timeout = self.config.timeout
        # UTF-8 addresses (RFC 6531) go out as UTF-8 when the client asked for SMTPUTF8.
        encoding = "utf-8" if any(opt.upper() == "SMTPUTF8" for opt in mail_options) else "ascii"
        # The paths are sent as the client gave them (intake checked them): aiosmtplib's mail()
        # and rcpt() would re-parse each with the email package (docs/performance.md). Its
        # execute_command still refuses control characters in a command; its data() does the
        # line endings and dot-stuffing.
        try:
            await _command(client, (250,), b"MAIL", b"FROM:<" + sender.encode(encoding) + b">",
                           *(opt.encode("ascii") for opt in mail_options), timeout=timeout)
            await _command(client, (250, 251), b"RCPT", b"TO:<" + recipient.encode(encoding) + b">",
                           *(opt.encode("ascii") for opt in rcpt_options), timeout=timeout)
            response = await client.data(data, timeout=timeout)
        except aiosmtplib.SMTPResponseException as exc:
            # Refused for this envelope: reset it and keep the connection.
            try:
                await client.rset(timeout=timeout)
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                client.close()
            return Reply(exc.code, exc.message, self.config.host, tls)
        return Reply(response.code, response.message, self.config.host, tls, parse_queue_id(response.message))

    async def _connect(self) -> aiosmtplib.SMTP:
        mode = self.config.tls
        client = aiosmtplib.SMTP(
            hostname=self.config.host,
            port=self.config.port,
            local_hostname=self.helo_name,
            timeout=self.config.timeout,
            use_tls=mode == "implicit",
            start_tls={"starttls": True, "starttls-if-offered": None}.get(mode, False),
            validate_certs=self.config.verify_certificates,
            username=self.config.username or None,
            password=self.config.password or None,
        )
        await client.connect()
        if client.is_ehlo_or_helo_needed:  # no STARTTLS or AUTH asked for it: greet now, as mail() would
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
        return client

    def _discard(self, client: aiosmtplib.SMTP | None) -> None:
        if client is not None and client.is_connected:
            client.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await asyncio.wait_for(client.quit(), timeout=2)
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                client.close()


class MaildirUpstream:
    """Writes each copy into a Maildir (``new/``) as what would have been sent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.eight_bit_mime = True  # a file takes any octet
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    async def send(self, sender: str, recipient: str, data: bytes, mail_options: list[str],
                   status: StatusRequest | None = None) -> Reply:
        name = f"{time.time_ns()}.{secrets.token_hex(8)}.estampille"
        envelope = f"X-Estampille-Envelope-From: <{sender}>\r\nX-Estampille-Envelope-To: <{recipient}>\r\n"
        try:
            await asyncio.to_thread(self._write, name, envelope.encode("utf-8") + data)
        except OSError as exc:
            return Reply(None, f"cannot write to outbox: {exc.strerror}", "maildir")
        return Reply(250, f"2.0.0 Ok: queued as {name}", "maildir", None, name)

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.directory / "tmp" / name
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.rename(self.directory / "new" / name)

    async def close(self) -> None:
        return None


def make_upstream(config: Config) -> Upstream:
    if config.upstream.kind == "maildir":
        return MaildirUpstream(config.data_path / "outbox")
    return SMTPUpstream(config.upstream, config.smtp.hostname)


def _tls_of(client: aiosmtplib.SMTP) -> str | None:
    ssl_object = client.get_transport_info("ssl_object")
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0]}" if cipher else ssl_object.version()


async def _command(client: aiosmtplib.SMTP, expected: tuple[int, ...], *args: bytes, timeout: float) -> None:
    response = await client.execute_command(*args, timeout=timeout)
    if response.code not in expected:
        raise aiosmtplib.SMTPResponseException(response.code, response.message)


def one_line(text: str) -> str:
    """A reply's text on one line, cut at 200 characters: for log lines."""
    return " ".join((text or "").split())[:200]
