"""Delivery: hands each recipient's copy to the upstream and records what it answered.

The worker claims due deliveries (queued, or deferred and due) and marks them
'sending'; after a crash those go back to 'queued' at start (at-least-once).
Per delivery: prepare the copy (stored, with its delivery record, BEFORE it is
sent), send it in its own envelope, then in ONE transaction store the hand-off
record, the attempt and the new state (and a DSN on a permanent failure).

Replies are classified the way GNU Mailman does: 2xx delivered, 5xx failed,
anything else (4xx, timeout, connection failure) deferred with exponential
backoff until ``delivery.give_up_after``, then failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import secrets
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosmtplib

from relay import acklink, dkim, dsn, records
from relay.certify import Certified, Certifier, Prepared
from relay.config import AckConfig, Config, UpstreamConfig
from relay.message import header_block, read_facts, to_crlf
from relay.spool import Incoming, Spool
from relay.store import INLINE_MAX, Store

log = logging.getLogger("estampille.deliver")
T = TypeVar("T")

CLAIM_BATCH_MAX = 64
MAILBOX_FULL = 552
PREPARED_CACHE_ENTRIES = 16  # messages whose certify preparation is kept for their other recipients
PREPARED_CACHE_OCTETS = 32 * 2**20
# Certify steps waiting for the certify thread go to it together, up to this many a call, or
# fewer when their messages add up to CERTIFY_BATCH_OCTETS: a batch's copies all exist at once.
CERTIFY_BATCH_MAX = 32
CERTIFY_BATCH_OCTETS = 4 * 2**20
# Each delivery in progress holds its copy in memory until it is sent (and more while it is
# certified): deliveries in progress hold at most this many octets of messages, so a large
# message to many recipients goes out a few copies at a time. A larger message goes alone.
OCTETS_IN_PROGRESS = 128 * 2**20
# After the upstream refuses a new connection while others are open, the pool keeps to those
# this long before it tries to grow again (SMTPUpstream).
POOL_SHRINK_SECONDS = 600.0
NO_LINKS = AckConfig(insert=False)  # a DSN is signed but carries no acknowledgment link
STOP_GRACE_SECONDS = 5.0
INTAKE_CHECK_SECONDS = 0.05  # a delivery held back for intake looks again this often
# An outcome the store could not take (locked, full) is known: recording it is retried,
# not the sending (that would send the copy twice), from this wait doubling up to the max.
RECORD_RETRY_FIRST = 0.5
RECORD_RETRY_MAX = 30.0
_QUEUE_ID = re.compile(r"(?:queued as|queue id|id=|\bid\b)\s*[:=]?\s*<?([A-Za-z0-9][A-Za-z0-9._@-]{2,})>?", re.I)


@dataclass(frozen=True)
class Job:
    """One claimed delivery with what its sending needs from its submission."""

    delivery_id: int
    submission_id: str
    recipient: str
    attempts: int
    copy_sha256: str | None
    record_digest: str | None
    kind: str
    mail_from: str
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    data_sha256: str
    received_at: float
    message_id: str | None
    submission_digest: str
    size: int  # octets of the message as received

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        return cls(
            delivery_id=row["id"], submission_id=row["submission_id"], recipient=row["recipient"],
            attempts=row["attempts"], copy_sha256=row["copy_sha256"], record_digest=row["record_digest"],
            kind=row["kind"], mail_from=row["mail_from"], mail_options=tuple(json.loads(row["mail_options"])),
            rcpt_options=tuple(json.loads(row["rcpt_options"])), data_sha256=row["data_sha256"],
            received_at=row["received_at"], message_id=row["message_id"],
            submission_digest=row["submission_digest"], size=row["size"],
        )


@dataclass(frozen=True)
class Reply:
    """What the upstream answered; ``code`` is None when it could not be reached."""

    code: int | None
    text: str
    upstream_host: str
    tls: str | None = None
    queue_id: str | None = None


def classify(code: int | None) -> str:
    """'delivered' for 2xx, 'failed' for 5xx, 'deferred' for anything else (4xx, no answer).

    552 (mailbox full) is deferred, as GNU Mailman does: space may free up before we give up.
    """
    if code is not None and 200 <= code < 300:
        return "delivered"
    if code is not None and 500 <= code < 600 and code != MAILBOX_FULL:
        return "failed"
    return "deferred"


def too_many_connections(reply: Reply) -> bool:
    """Whether ``reply`` may say the client has too many connections open: 421 (Postfix, Exim,
    before or after the greeting), or 432 / 4.3.2 (Exchange Online's client submission)."""
    return reply.code in (421, 432) or (reply.code is not None and 400 <= reply.code < 500
                                        and reply.text.startswith("4.3.2"))


def retry_delay(attempts: int, first: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based): first, doubling, capped."""
    return min(maximum, first * 2 ** max(0, attempts - 1))


def parse_queue_id(text: str) -> str | None:
    """The upstream's queue id from a reply such as '2.0.0 Ok: queued as 4Xk3Zt1QvPz'."""
    found = _QUEUE_ID.search(text or "")
    return found.group(1) if found else None


class Upstream(Protocol):
    """Where copies go: an SMTP server, or a directory standing in for one."""

    eight_bit_mime: bool  # the upstream takes 8-bit bodies (8BITMIME): certify may leave 8-bit parts as they are

    async def send(self, sender: str, recipient: str, data: bytes, mail_options: list[str]) -> Reply: ...

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

    async def send(self, sender: str, recipient: str, data: bytes, mail_options: list[str]) -> Reply:
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
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                    return Reply(None, f"{type(exc).__name__}: {exc}", self.config.host, None)
                except Exception as exc:  # noqa: BLE001 - a flaw of ours in connecting: retry, never crash
                    log.exception("unexpected error connecting to %s", self.config.host)
                    return Reply(None, f"local error while connecting: {type(exc).__name__}", self.config.host, None)
                if taken is None:
                    continue  # refused while others are open: wait for one of them
                client, new = taken
                try:
                    reply = await self._send_on(client, new, sender, recipient, data, mail_options)
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
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
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
        async with self._opened:  # others being opened at the same moment may yet succeed
            await self._opened.wait_for(lambda: self._open() or not self._connecting)
        others = self._open()
        if not others:
            return False
        if self._slots.total > others:
            log.warning("the upstream %s refused connection %d (%s): keeping to %d for %.0f s",
                        self.config.host, others + 1, _one_line(refusal), others, POOL_SHRINK_SECONDS)
            self._slots.resize(others)
        self._shrunk_until = time.monotonic() + POOL_SHRINK_SECONDS
        return True

    def _open(self) -> int:
        return sum(1 for c in (*self._active, *self._idle) if c.is_connected)

    async def _send_on(self, client: aiosmtplib.SMTP, new: bool, sender: str, recipient: str, data: bytes,
                       mail_options: list[str]) -> Reply | None:
        """The upstream's reply; None when it refused the first transaction of this ``new``
        connection as one too many while others are open (then closed)."""
        try:
            reply = await self._transaction(client, sender, recipient, data, mail_options)
            self.eight_bit_mime = client.supports_extension("8bitmime")
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            self._discard(client)
            return Reply(None, f"{type(exc).__name__}: {exc}", self.config.host, None)
        except Exception as exc:  # noqa: BLE001 - e.g. an address the upstream cannot take: retry, never crash
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
                           mail_options: list[str]) -> Reply:
        tls = _tls_of(client)
        timeout = self.config.timeout
        # UTF-8 addresses (RFC 6531) go out as UTF-8 when the client asked for SMTPUTF8.
        encoding = "utf-8" if any(opt.upper() == "SMTPUTF8" for opt in mail_options) else "ascii"
        # The paths are sent as the client gave them (intake checked them): aiosmtplib's mail()
        # and rcpt() would re-parse each with the email package, and its data() would rewrite
        # every line ending of a copy that is CRLF already: 0.08 ms of CPU per delivery, a fifth
        # of the sending. Its execute_command still refuses control characters in a command.
        try:
            await _command(client, (250,), b"MAIL", b"FROM:<" + sender.encode(encoding) + b">",
                           *(opt.encode("ascii") for opt in mail_options), timeout=timeout)
            await _command(client, (250, 251), b"RCPT", b"TO:<" + recipient.encode(encoding) + b">", timeout=timeout)
            await _command(client, (354,), b"DATA", timeout=timeout)
            protocol = client.protocol
            if protocol is None:  # the upstream hung up after its 354: retried as any lost connection
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            protocol.write(data_on_wire(data))
            protocol.write(b".\r\n")
            response = await protocol.read_response(timeout=timeout)
            if response.code != 250:
                raise aiosmtplib.SMTPDataError(response.code, response.message)
        except aiosmtplib.SMTPResponseException as exc:
            # Refused for this envelope: reset it and keep the connection.
            try:
                await client.rset(timeout=timeout)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
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
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                client.close()


class MaildirUpstream:
    """Writes each copy into a Maildir (``new/``) as what would have been sent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.eight_bit_mime = True  # a file takes any octet
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    async def send(self, sender: str, recipient: str, data: bytes, mail_options: list[str]) -> Reply:
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


class Budget:
    """Units shared by tasks: octets of the deliveries in progress (each takes its message's
    size, at most all), or the upstream's connection slots (each takes one).

    First come, first served: once one waits, later ones wait behind it even if they would
    fit, so a large message is not held back for ever by a stream of small ones. ``total``
    may change meanwhile (resize).
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def take(self, units: int) -> int:
        """Wait for ``units`` (at most the total) to be free, take them, and return how many."""
        units = min(units, self.total)
        if not self._waiters and self.used + units <= self.total:
            self.used += units
            return units
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((units, waiter))
        try:
            await waiter  # _grant counted them as used before waking this one
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back(units)  # granted, but cancelled before it could use them
            else:
                self._grant()  # those queued behind it may fit now
            raise
        return units

    def give_back(self, units: int) -> None:
        self.used -= units
        self._grant()

    def resize(self, total: int) -> None:
        self.total = total
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            units, waiter = self._waiters[0]
            if waiter.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self.used + units > self.total:
                return
            self._waiters.popleft()
            self.used += units
            waiter.set_result(None)


class CertifyThread:
    """The thread that certifies; steps queued while it is busy go to it together, next.

    One hop to the thread and back serves many copies: a hop per copy cost about 10 % more
    CPU per delivery (thread wake-ups, GIL hand-offs; alternated bench runs). One thread, one
    step at a time: the large transient buffers of certifying stay in one malloc arena (a
    2 MB message to 10 recipients: peak RSS 105-109 MB; two threads gave 122-124 MB).
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="estampille-certify")
        self._queue: list[tuple[Callable[[], Any], int, asyncio.Future[Any]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def run(self, step: Callable[[], T], octets: int) -> T:
        """``step()``'s result (or exception), computed in the certify thread; ``octets``: the size
        of the message it certifies."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((step, octets, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._drain(), name="estampille-certify")
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch = self._next_batch()
                outcomes = await loop.run_in_executor(self._executor, _run_steps, [step for step, _ in batch])
                for (_, future), (result, error) in zip(batch, outcomes):
                    if future.done():  # its delivery was cancelled meanwhile (a stop)
                        continue
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(result)
        finally:
            self._runner = None

    def _next_batch(self) -> list[tuple[Callable[[], Any], asyncio.Future[Any]]]:
        batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        octets = 0
        while self._queue and len(batch) < CERTIFY_BATCH_MAX and (not batch or octets < CERTIFY_BATCH_OCTETS):
            step, size, future = self._queue.pop(0)
            if not future.done():  # else its delivery was cancelled (a stop)
                batch.append((step, future))
                octets += size
        return batch

    def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        self._executor.shutdown(wait=False)


def _run_steps(steps: list[Callable[[], Any]]) -> list[tuple[Any, BaseException | None]]:
    outcomes: list[tuple[Any, BaseException | None]] = []
    for step in steps:
        try:
            outcomes.append((step(), None))
        except Exception as exc:  # noqa: BLE001 - handed to that step's delivery alone
            outcomes.append((None, exc))
    return outcomes


class Deliverer:
    """The delivery worker: claims due deliveries and runs at most ``upstream.concurrency`` at once."""

    def __init__(self, config: Config, store: Store, upstream: Upstream | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.upstream = upstream or make_upstream(config)
        self.clock = clock
        # Keys and templates are read once, here; certifying is then pure and runs in its thread.
        self.certifier = Certifier(
            ack=config.ack, templates=acklink.AckTemplates.from_config(config.ack),
            public_url=config.tracker.public_url, keyring=dkim.load_keyring(config),
        )
        # The last messages' preparation, by submission: their other recipients' copies reuse it.
        self._prepared: OrderedDict[str, tuple[Certifier, Prepared]] = OrderedDict()
        # Delivery record digests written by _prepare, handed to _finish's hand-off record.
        self._record_digests: dict[int, str] = {}
        # Submissions whose preparation is in progress: their other recipients wait for it.
        self._preparing: dict[str, asyncio.Future[None]] = {}
        self._certify_thread = CertifyThread()
        self.spool = Spool(store, on_queued=self.wake)
        self._wakeup = asyncio.Event()
        self._limit = max(1, config.upstream.concurrency)
        # Claimed jobs wait here for a worker; claiming in batches keeps one transaction for many.
        self._jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._busy = 0
        self._octets = Budget(OCTETS_IN_PROGRESS)
        self._all_idle = asyncio.Event()
        # Set by the service once intake runs: while it says True, at most
        # upstream.concurrency_while_receiving deliveries are in progress (clients come first).
        self.receiving: Callable[[], bool] | None = None
        self._job_done = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        resumed = await self.store.requeue_interrupted(self.clock())
        if resumed:
            log.info("resumed %d deliveries interrupted by a stop", resumed)
        self._claimer = asyncio.create_task(self._claim_loop(), name="estampille-claim")
        self._workers = [
            asyncio.create_task(self._work(), name=f"estampille-deliver-{n}") for n in range(self._limit)
        ]

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop claiming; let deliveries in flight finish for ``grace`` seconds, then cancel them.

        Claimed deliveries not started, or cancelled, go back to 'queued' for the next start.
        """
        if self._claimer is not None:
            self._claimer.cancel()
            await asyncio.gather(self._claimer, return_exceptions=True)
            self._claimer = None
        while not self._jobs.empty():
            self._jobs.get_nowait()
        if self._busy:
            try:
                await asyncio.wait_for(self._all_idle.wait(), grace)
            except asyncio.TimeoutError:
                log.warning("%d deliveries still in flight after %.0fs; they will be retried", self._busy, grace)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        await self.store.requeue_interrupted(self.clock())
        await self.upstream.close()
        self._certify_thread.close()

    def use_keyring(self, keyring: dkim.Keyring) -> None:
        """SIGHUP: copies certified from now on are signed with ``keyring``; a copy being
        certified keeps the keys it started with (each job reads ``self.certifier`` once)."""
        self.certifier = dataclasses.replace(self.certifier, keyring=keyring)

    def wake(self) -> None:
        """New deliveries were queued: look at the queue now rather than at the next poll."""
        self._wakeup.set()

    # -- the loop ---------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            self._wakeup.clear()
            rows = []
            # Keep about one batch ahead of the workers, no more: the rest stays due in the database.
            if self._jobs.qsize() < self._limit:
                try:
                    rows = await self.store.claim_due(self.clock(), CLAIM_BATCH_MAX)
                except Exception:  # noqa: BLE001 - the worker must survive a store hiccup
                    log.exception("cannot claim deliveries; retrying")
            for row in rows:
                self._jobs.put_nowait(Job.from_row(row))
            if not rows or self._jobs.qsize() >= self._limit:
                await self._idle()

    async def _idle(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that races
        # the event being set (CPython gh-86296), and stop() then waited for ever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.delivery.poll_interval):
                await self._wakeup.wait()

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            await self._make_way_for_intake()
            held = await self._octets.take(job.size)
            self._busy += 1
            self._all_idle.clear()
            try:
                await self._deliver(job)
            except Exception:  # noqa: BLE001 - a worker never dies; the job stays 'sending' until restart
                log.exception("delivery %d (%s) crashed", job.delivery_id, job.submission_id)
            finally:
                self._octets.give_back(held)
                self._busy -= 1
                self._job_done.set()
                if not self._busy:
                    self._all_idle.set()
            if self._jobs.qsize() < self._limit:
                self._wakeup.set()  # running low: let the claimer fetch the next batch

    async def _make_way_for_intake(self) -> None:
        """Wait while a client is sending mail and the reduced share of deliveries is taken.

        Both compete for the same CPU; a client waits for each reply, a queued delivery does not
        (as Exim's queue_only_load and Sendmail's QueueLA put accepting before delivering).
        """
        share = self.config.upstream.concurrency_while_receiving
        while share and self.receiving is not None and self._busy >= share and self.receiving():
            self._job_done.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INTAKE_CHECK_SECONDS):
                    await self._job_done.wait()

    async def _deliver(self, job: Job) -> None:
        started = self.clock()
        try:
            data = await self._prepare(job)
            job = await self._with_record(job)
        except Exception as exc:  # noqa: BLE001 - our own failure: retry later, never lose it
            log.exception("delivery %d (%s) not prepared", job.delivery_id, job.submission_id)
            reply = Reply(None, f"local error while preparing the copy: {type(exc).__name__}", "local")
        else:
            options = _forwarded_options(job, data, self.upstream.eight_bit_mime)
            reply = await self.upstream.send(job.mail_from, job.recipient, data, options)
        wait = RECORD_RETRY_FIRST
        while True:
            try:
                await self._finish(job, reply, started)
                return
            except Exception:  # noqa: BLE001 - still 'sending': a stop re-queues it for the next start
                log.exception("delivery %d (%s): outcome not recorded, trying again in %.1fs",
                              job.delivery_id, job.submission_id, wait)
            await asyncio.sleep(wait)
            wait = min(RECORD_RETRY_MAX, wait * 2)

    # -- preparing the copy (the certify step plugs in here) ----------------

    async def _prepare(self, job: Job) -> bytes:
        """The exact bytes to send to ``job.recipient``, stored with their delivery record before sending.

        The certified copy (unless it is large: then as a file, before), its delivery record and
        its acknowledgment tokens are written in one transaction. A delivery that already has a
        copy resends exactly what was recorded.
        """
        if job.copy_sha256:
            return await self.store.get_blob(job.copy_sha256)
        now = self.clock()
        certifier = self.certifier if job.kind == "mail" else self._dsn_certifier()
        copy = await self._certified(job, certifier, now)
        copy_sha256 = copy.sha256
        inline = len(copy.data) <= INLINE_MAX  # else a file, written durably first
        if not inline:
            await self.store.put_blob(copy.data)
        record = records.delivery_record(
            submission_digest=job.submission_digest,
            recipient=job.recipient,
            copy_sha256=copy_sha256,
            dkim=list(copy.dkim),
            ack_link_inserted=copy.ack_link_inserted,
            ack_link_reason=copy.ack_link_reason,
            certified_at=records.iso_time(now),
        )

        async def record_copy(db: Any) -> None:
            if inline:
                await Store.insert_bytes(db, copy_sha256, copy.data)
            await Store.insert_record(db, record, submission_id=job.submission_id, delivery_id=job.delivery_id, now=now)
            await Store.set_delivery_copy(db, job.delivery_id, copy_sha256, record.digest, now)
            for link in copy.links:
                await Store.insert_ack_token(db, token_sha256=link.token_sha256, delivery_id=job.delivery_id,
                                             target_url=link.target_url, now=now)
            if job.message_id is None:
                await Store.set_generated_message_id(db, job.submission_id, copy.message_id)

        await self.store.write(record_copy, urgent=False)
        self._record_digests[job.delivery_id] = record.digest
        return copy.data

    async def _certified(self, job: Job, certifier: Certifier, now: float) -> Certified:
        """The certify step for ``job``, in the certify thread.

        The first recipient of a message prepares it (with its copy); the others, meanwhile,
        wait for that preparation rather than make their own, then reuse it.
        """
        step = functools.partial(self._certify, job, certifier, now=now, eight_bit_mime=self.upstream.eight_bit_mime)
        while True:
            cached = self._prepared.get(job.submission_id)
            if cached and cached[0] is certifier:  # keys unchanged since
                copy, _ = await self._certify_thread.run(functools.partial(step, cached[1], None), len(cached[1].data))
                return copy
            preparing = self._preparing.get(job.submission_id)
            if preparing is None:
                break
            await asyncio.wait([preparing])  # then look again: it may have failed, or had other keys
        self._preparing[job.submission_id] = asyncio.get_running_loop().create_future()
        try:
            original = await self.store.get_blob(job.data_sha256)
            copy, prepared = await self._certify_thread.run(functools.partial(step, None, original), len(original))
            self._remember(job.submission_id, certifier, prepared)
            return copy
        finally:
            self._preparing.pop(job.submission_id).set_result(None)

    @staticmethod
    def _certify(job: Job, certifier: Certifier, prepared: Prepared | None, original: bytes | None, *,
                 now: float, eight_bit_mime: bool) -> tuple[Certified, Prepared]:
        """The certify step for one recipient (in the certify thread: signing and MIME work are CPU-bound).

        The Date and Message-ID added to a message lacking them come from the submission,
        so every recipient's copy carries the same ones.
        """
        if prepared is None:
            assert original is not None
            prepared = certifier.prepare(original, mail_from=job.mail_from, date=_utc(job.received_at),
                                         message_id_local=job.submission_id)
        copy = certifier.copy(prepared, tokens=lambda: secrets.token_urlsafe(acklink.TOKEN_BYTES), now=int(now),
                              eight_bit_mime=eight_bit_mime)
        return copy, prepared

    def _dsn_certifier(self) -> Certifier:
        """Our own DSNs: signed with the default domain's keys even under 'refuse', and no link."""
        keyring = dataclasses.replace(self.certifier.keyring, refuse_unknown=False)
        return dataclasses.replace(self.certifier, ack=NO_LINKS, keyring=keyring)

    def _remember(self, submission_id: str, certifier: Certifier, prepared: Prepared) -> None:
        self._prepared[submission_id] = (certifier, prepared)
        self._prepared.move_to_end(submission_id)
        while (len(self._prepared) > PREPARED_CACHE_ENTRIES
               or sum(len(p.data) for _, p in self._prepared.values()) > PREPARED_CACHE_OCTETS):
            self._prepared.popitem(last=False)

    async def _with_record(self, job: Job) -> Job:
        """The job with the digest of its delivery record, which _prepare may just have written."""
        digest = self._record_digests.pop(job.delivery_id, None)
        if job.record_digest or digest is None:
            return job
        return dataclasses.replace(job, record_digest=digest)

    # -- recording the outcome ------------------------------------------------

    async def _finish(self, job: Job, reply: Reply, started: float) -> None:
        now = self.clock()
        outcome = classify(reply.code)
        expired = outcome == "deferred" and now - job.received_at >= self.config.delivery.give_up_after
        if expired:
            outcome = "failed"
        delay = retry_delay(job.attempts + 1, self.config.delivery.retry_first, self.config.delivery.retry_max)
        next_at = now + delay if outcome == "deferred" else now
        dsn_blob = await self._dsn_for(job, reply, expired, now) if outcome == "failed" else None
        handoff = None
        if reply.code is not None and job.record_digest:
            handoff = records.handoff_record(
                delivery_digest=job.record_digest, code=reply.code, text=reply.text, queue_id=reply.queue_id,
                upstream_host=reply.upstream_host, tls=reply.tls, handed_at=records.iso_time(now),
            )
        attempt = {
            "delivery_id": job.delivery_id, "started_at": started, "finished_at": now, "outcome": outcome,
            "code": reply.code, "reply": reply.text, "queue_id": reply.queue_id,
            "upstream_host": reply.upstream_host, "tls": reply.tls,
        }

        async def record_outcome(db: Any) -> str | None:
            if handoff is not None:
                await Store.insert_record(db, handoff, submission_id=job.submission_id,
                                          delivery_id=job.delivery_id, now=now)
            await Store.finish_attempt(db, attempt, state=outcome, next_attempt_at=next_at,
                                       handoff_digest=handoff.digest if handoff else None)
            if job.kind == "mail":  # webhook event 'delivered', 'deferred' or 'failed'
                await self.store.enqueue_event(db, outcome, {
                    "submission_id": job.submission_id, "message_id": job.message_id, "recipient": job.recipient,
                    "delivery_id": job.delivery_id, "code": reply.code, "reply": reply.text,
                    "record": handoff.digest if handoff else None,
                    "next_attempt_at": records.iso_time(next_at) if outcome == "deferred" else None,
                }, now)
            return (await Spool.insert(db, *dsn_blob, now)).submission_id if dsn_blob is not None else None

        dsn_id = await self.store.write(record_outcome, urgent=False)
        log.info(
            "delivery %d of %s to <%s> message_id=%s: %s (%s %s)%s", job.delivery_id, job.submission_id,
            job.recipient, job.message_id, outcome, reply.code, _one_line(reply.text),
            f", retry in {delay:.0f}s" if outcome == "deferred" else "",
        )
        if dsn_blob is not None:
            log.info("DSN %s queued to <%s> for %s", dsn_id, job.mail_from, job.submission_id)
            self.wake()

    async def _dsn_for(self, job: Job, reply: Reply, expired: bool, now: float) -> tuple[Any, ...] | None:
        """The DSN's (incoming, facts, sha256), its bytes already stored; None when none is owed."""
        if job.kind != "mail" or not job.mail_from:
            return None  # never bounce a bounce, never to <>
        original = await self.store.get_blob(job.data_sha256)
        host = self.config.smtp.hostname
        text = reply.text if reply.code is None else f"{reply.code} {reply.text}"
        failure = dsn.Failure(
            recipient=job.recipient,
            status=dsn.status_of(reply.code, reply.text, expired=expired),
            diagnostic=("delivery time expired; last reply: " + text) if expired else text,
            original_recipient=_orcpt(job.rcpt_options),
        )
        data = dsn.build_dsn(
            reporting_mta=host, sender=job.mail_from, failures=[failure], original_headers=header_block(original),
            original_message_id=job.message_id, arrival=_utc(job.received_at), now=_utc(now),
            boundary=f"estampille-{secrets.token_hex(12)}", message_id=f"<{secrets.token_hex(16)}@{host}>",
        )
        # Spool.insert stores a small DSN with its rows; a large one is a file, written first.
        sha = records.sha256_hex(data) if len(data) <= INLINE_MAX else await self.store.put_blob(data)
        incoming = Incoming(data=data, mail_from="", recipients=(job.mail_from,), client_address="local", kind="dsn")
        return incoming, read_facts(data), sha


async def _command(client: aiosmtplib.SMTP, expected: tuple[int, ...], *args: bytes, timeout: float) -> None:
    response = await client.execute_command(*args, timeout=timeout)
    if response.code not in expected:
        raise aiosmtplib.SMTPResponseException(response.code, response.message)


def data_on_wire(data: bytes) -> bytes:
    """A copy as sent after DATA (RFC 5321 4.5.2), but for the final ".CRLF": CRLF line endings,
    dot-stuffed, ending with CRLF.

    Copies are CRLF throughout already (certify makes them so), which to_crlf checks cheaply;
    with no line to stuff either, the copy itself is returned (no second copy of a large message).
    """
    data = to_crlf(data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def _forwarded_options(job: Job, data: bytes, eight_bit_mime: bool) -> list[str]:
    """MAIL parameters the upstream needs to take the bytes as they are (8-bit body, UTF-8 addresses).

    An 8-bit copy is declared BODY=8BITMIME to an upstream that announced it, even when the
    client did not declare its own body (many send 8-bit bodies without saying so).
    """
    wanted = {"BODY=8BITMIME", "SMTPUTF8"}
    options = [opt for opt in job.mail_options if opt.upper() in wanted]
    if eight_bit_mime and not data.isascii() and "BODY=8BITMIME" not in (opt.upper() for opt in options):
        options.append("BODY=8BITMIME")
    return options


def _orcpt(options: tuple[str, ...]) -> str | None:
    for opt in options:
        if opt.upper().startswith("ORCPT="):
            return opt[len("ORCPT="):]
    return None


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def _one_line(text: str) -> str:
    return " ".join((text or "").split())[:200]
