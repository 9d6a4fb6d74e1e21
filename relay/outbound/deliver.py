"""Delivery: hands each recipient's copy to the upstream (relay.outbound.upstream) and records what it answered.

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
import itertools
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from relay.backoff import Backoff
from relay.batching import Batcher
from relay.certify import acklink, dkim
from relay.certify.certifier import Certified, Certifier, Prepared
from relay.config import AckConfig, Config
from relay.evidence import records
from relay.outbound import dsn, verp
from relay.outbound.budget import Budget
from relay.outbound.notice import Bounced, stage_notice, utc
from relay.outbound.upstream import Reply, Upstream, make_upstream, one_line
from relay.smtp.spool import Spool
from relay.store import INLINE_MAX, Store, held
from relay.store import reports as report_store
from relay.store.deliveries import DueDelivery
from relay.store.states import DeliveryState

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
NO_LINKS = AckConfig(insert=False)  # a DSN is signed but carries no acknowledgment link
STOP_GRACE_SECONDS = 5.0
INTAKE_CHECK_SECONDS = 0.05  # a delivery held back for intake looks again this often
# An outcome the store could not take (locked, full) is known: recording it is retried,
# not the sending (that would send the copy twice), from this wait doubling up to the max.
RECORD_RETRY = Backoff(first=0.5, maximum=30.0)


def classify(code: int | None) -> str:
    """'delivered' for 2xx, 'failed' for 5xx, 'deferred' for anything else (4xx, no answer).

    552 (mailbox full) is deferred, as GNU Mailman does: space may free up before we give up.
    """
    if code is not None and 200 <= code < 300:
        return "delivered"
    if code is not None and 500 <= code < 600 and code != MAILBOX_FULL:
        return "failed"
    return "deferred"


class CertifyThread:
    """The thread that certifies; steps queued while it is busy go to it together, next
    (relay.batching).

    One hop to the thread and back serves many copies: a hop per copy cost about 10 % more
    CPU per delivery (docs/performance.md). One thread, one step at a time: the large
    transient buffers of certifying stay in one malloc arena (docs/performance.md).
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="estampille-certify")
        self._batcher: Batcher[tuple[Callable[[], Any], int], Any] = Batcher(
            self._run_steps, name="estampille-certify", max_items=CERTIFY_BATCH_MAX,
            weight=lambda step: step[1], max_weight=CERTIFY_BATCH_OCTETS,
        )

    async def run(self, step: Callable[[], T], octets: int) -> T:
        """``step()``'s result (or exception), computed in the certify thread; ``octets``: the size
        of the message it certifies."""
        result: T = await self._batcher.submit((step, octets))
        return result

    async def _run_steps(self, steps: list[tuple[Callable[[], Any], int]]) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, _run_steps, [s for s, _ in steps])

    def close(self) -> None:
        self._batcher.close()
        self._executor.shutdown(wait=False)


def _run_steps(steps: list[Callable[[], Any]]) -> list[Any]:
    """Each step's result, or the exception it raised."""
    outcomes: list[Any] = []
    for step in steps:
        try:
            outcomes.append(step())
        except Exception as exc:  # noqa: BLE001 - handed to that step's delivery alone
            outcomes.append(exc)
    return outcomes


class Deliverer:
    """The delivery worker: claims due deliveries and runs at most ``upstream.concurrency`` at once."""

    def __init__(self, config: Config, store: Store, upstream: Upstream | None = None,
                 clock: Callable[[], float] = time.time, on_unlinked: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.upstream = upstream or make_upstream(config)
        self.clock = clock
        self.on_unlinked = on_unlinked  # told the reason of each copy stored without an acknowledgment link
        # Keys and templates are read once, here; certifying is then pure and runs in its thread.
        self.certifier = Certifier(
            ack=config.ack, templates=acklink.AckTemplates.from_config(config.ack),
            public_url=config.tracker.public_url, keyring=dkim.load_keyring(config),
        )
        # The last messages' preparation, by submission: their other recipients' copies reuse it.
        self._prepared: OrderedDict[str, tuple[Certifier, Prepared]] = OrderedDict()
        # Delivery record digests written by _prepare, handed to _finish's hand-off record.
        self._record_digests: dict[int, str] = {}
        # Return tokens drawn by _prepare, handed to the sending (dsn.bounce_domain).
        self._tokens: dict[int, str] = {}
        # Submissions whose preparation is in progress: their other recipients wait for it.
        self._preparing: dict[str, asyncio.Future[None]] = {}
        self._certify_thread = CertifyThread()
        self.spool = Spool(store, on_queued=self.wake)
        self._wakeup = asyncio.Event()
        self._limit = max(1, config.upstream.concurrency)
        # Claimed jobs wait here for a worker; claiming in batches keeps one transaction for many.
        self._jobs: asyncio.Queue[DueDelivery] = asyncio.Queue()
        self._busy = 0
        self._octets = Budget(OCTETS_IN_PROGRESS)
        self._all_idle = asyncio.Event()
        # Set by the service once intake runs: while it says True, at most
        # upstream.concurrency_while_receiving deliveries are in progress (clients come first).
        self.receiving: Callable[[], bool] | None = None
        self._job_done = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._suspects: set[int] = set()  # left 'sending' at a crash (relay.store.held)

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        for poison in await held.hold_poison(self.store, self.clock()):
            log.error("delivery %d of %s to <%s> held: %s; 'estampille queue release %d' retries it",
                      poison.delivery_id, poison.submission_id, poison.recipient, held.HELD_REPLY, poison.delivery_id)
        self._suspects = await held.suspects(self.store)
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
            except TimeoutError:
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
                except Exception:
                    log.exception("cannot claim deliveries; retrying")
            for row in rows:
                self._jobs.put_nowait(row)
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
            octets = await self._octets.take(job.size)
            self._busy += 1
            self._all_idle.clear()
            try:
                await self._deliver(job)
            except Exception:
                log.exception("delivery %d (%s) crashed", job.delivery_id, job.submission_id)
            finally:
                self._octets.give_back(octets)
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

    async def _deliver(self, job: DueDelivery) -> None:
        suspect = job.delivery_id in self._suspects
        if suspect:  # left 'sending' at a crash: is it in a worker's hands at the next one?
            await held.mark_started(self.store, job.delivery_id)
        started = self.clock()
        try:
            data = await self._prepare(job)
            job = await self._with_record(job)
        except Exception as exc:
            log.exception("delivery %d (%s) not prepared", job.delivery_id, job.submission_id)
            reply = Reply(None, f"local error while preparing the copy: {type(exc).__name__}", "local")
        else:
            options = _forwarded_options(job, data, self.upstream.eight_bit_mime)
            sender, status = await self._return_path(job)
            reply = await self.upstream.send(sender, job.recipient, data, options, status)
        for failures in itertools.count(1):
            try:
                await self._finish(job, reply, started)
                break
            except Exception:
                wait = RECORD_RETRY.delay(failures, random.random())
                log.exception("delivery %d (%s): outcome not recorded, trying again in %.1fs",
                              job.delivery_id, job.submission_id, wait)
            await asyncio.sleep(wait)
        if suspect:  # its run ended without taking the relay down
            self._suspects.discard(job.delivery_id)
            await held.forget(self.store, job.delivery_id)

    # -- preparing the copy (the certify step plugs in here) ----------------

    async def _prepare(self, job: DueDelivery) -> bytes:
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
        # A copy without a link can never be acknowledged: never silent (our own DSNs carry none by design).
        unlinked = copy.ack_link_reason if job.kind == "mail" and not copy.ack_link_inserted else None
        copy_sha256 = copy.sha256
        inline = len(copy.data) <= INLINE_MAX  # else a file, written durably first
        token = secrets.token_hex(verp.TOKEN_BYTES) if self._asks_status(job) else None
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
            if token is not None:
                await report_store.insert_token(db, token, job.delivery_id, now)
            if unlinked is not None:
                await self.store.enqueue_event(db, "copy.unlinked", {
                    "submission_id": job.submission_id, "message_id": job.message_id or copy.message_id,
                    "recipient": job.recipient, "reason": unlinked, "record": record.digest,
                }, now)

        await self.store.write(record_copy, urgent=False)
        self._record_digests[job.delivery_id] = record.digest
        if token is not None:
            self._tokens[job.delivery_id] = token
        if unlinked is not None:
            log.warning("delivery %d (%s) to %s: the copy carries no acknowledgment link: %s",
                        job.delivery_id, job.submission_id, job.recipient, unlinked)
            if self.on_unlinked is not None:
                self.on_unlinked(unlinked)
        return copy.data

    async def _certified(self, job: DueDelivery, certifier: Certifier, now: float) -> Certified:
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
    def _certify(job: DueDelivery, certifier: Certifier, prepared: Prepared | None, original: bytes | None, *,
                 now: float, eight_bit_mime: bool) -> tuple[Certified, Prepared]:
        """The certify step for one recipient (in the certify thread: signing and MIME work are CPU-bound).

        The Date and Message-ID added to a message lacking them come from the submission,
        so every recipient's copy carries the same ones.
        """
        if prepared is None:
            assert original is not None
            prepared = certifier.prepare(original, mail_from=job.mail_from, date=utc(job.received_at),
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

    def _asks_status(self, job: DueDelivery) -> bool:
        """Whether ``job``'s copy goes with a return path of its own (our DSNs keep the null sender)."""
        return bool(self.config.dsn.bounce_domain) and job.kind == "mail"

    async def _return_path(self, job: DueDelivery) -> tuple[str, verp.StatusRequest | None]:
        """The envelope sender of ``job``'s copy, and the delivery status it asks for."""
        if not self._asks_status(job):
            return job.mail_from, None
        # Drawn with the copy (_prepare); a copy sent again, or prepared before dsn.bounce_domain
        # was set, has its token in the store, or gets one now.
        token = (self._tokens.pop(job.delivery_id, None) or await report_store.token_for(self.store, job.delivery_id)
                 or await report_store.add_token(self.store, secrets.token_hex(verp.TOKEN_BYTES),
                                                 job.delivery_id, self.clock()))
        status = verp.StatusRequest(token=token, recipient=job.recipient, orcpt=verp.orcpt_of(job.rcpt_options))
        return verp.return_path(token, self.config.dsn.bounce_domain), status

    async def _with_record(self, job: DueDelivery) -> DueDelivery:
        """The job with the digest of its delivery record, which _prepare may just have written."""
        digest = self._record_digests.pop(job.delivery_id, None)
        if job.record_digest or digest is None:
            return job
        return dataclasses.replace(job, record_digest=digest)

    # -- recording the outcome ------------------------------------------------

    async def _finish(self, job: DueDelivery, reply: Reply, started: float) -> None:
        now = self.clock()
        outcome = classify(reply.code)
        expired = outcome == "deferred" and now - job.received_at >= self.config.delivery.give_up_after
        if expired:
            outcome = "failed"
        delay = Backoff(self.config.delivery.retry_first, self.config.delivery.retry_max).delay(
            job.attempts + 1, random.random())
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
            await Store.finish_attempt(db, attempt, state=DeliveryState(outcome), next_attempt_at=next_at,
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
            "delivery %d of %s to <%s> message_id=%s: %s (%s)%s", job.delivery_id, job.submission_id,
            job.recipient, job.message_id, outcome, one_line(reply.line),
            f", retry in {delay:.0f}s" if outcome == "deferred" else "",
        )
        if dsn_blob is not None:
            log.info("DSN %s queued to <%s> for %s", dsn_id, job.mail_from, job.submission_id)
            self.wake()

    async def _dsn_for(self, job: DueDelivery, reply: Reply, expired: bool, now: float) -> tuple[Any, ...] | None:
        """The DSN's (incoming, facts, sha256), its bytes already stored; None when none is owed."""
        if job.kind != "mail" or not job.mail_from:
            return None  # never bounce a bounce, never to <>
        text = reply.text if reply.code is None else f"{reply.code} {reply.text}"
        bounced = Bounced(mail_from=job.mail_from, recipient=job.recipient, orcpt=verp.orcpt_of(job.rcpt_options),
                          data_sha256=job.data_sha256, message_id=job.message_id, received_at=job.received_at)
        return await stage_notice(
            self.store, self.config.smtp.hostname, bounced, status=dsn.status_of(reply.code, reply.text, expired=expired),
            diagnostic=("delivery time expired; last reply: " + text) if expired else text, now=now,
        )


def _forwarded_options(job: DueDelivery, data: bytes, eight_bit_mime: bool) -> list[str]:
    """MAIL parameters the upstream needs to take the bytes as they are (8-bit body, UTF-8 addresses).

    An 8-bit copy is declared BODY=8BITMIME to an upstream that announced it, even when the
    client did not declare its own body (many send 8-bit bodies without saying so).
    """
    wanted = {"BODY=8BITMIME", "SMTPUTF8"}
    options = [opt for opt in job.mail_options if opt.upper() in wanted]
    if eight_bit_mime and not data.isascii() and "BODY=8BITMIME" not in (opt.upper() for opt in options):
        options.append("BODY=8BITMIME")
    return options


