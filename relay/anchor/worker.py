"""Anchoring evidence in Bitcoin through OpenTimestamps calendars: the I/O half of ``relay.anchor.merkle``.

Two workers, both driven by :class:`Anchorer`:

- batching: every ``anchor.interval`` seconds, or as soon as ``anchor.max_batch``
  leaves wait, the waiting leaves become one batch: a nonce per leaf, one Merkle
  tree, and its root POSTed in parallel to every configured calendar (one request
  per calendar, whatever the batch size). The batch, the replies and the tree
  are stored in one transaction. With fewer than ``anchor.min_calendars``
  replies the batch stays 'submitting' and is retried with backoff (only the
  calendars that have not answered); it is never dropped.
- upgrading: every ``anchor.upgrade_interval`` seconds, each unconfirmed batch's
  pending attestations are looked up at their calendar, by the commitment that
  carries the attestation, if the calendar is allowed: an ``https`` URL whose host
  is on ``anchor.allowlist`` or is a configured calendar's (``http`` only with the
  tests-only ``anchor.http_for_tests``). Bitcoin attestations are merged into the
  batch; leaves get them when their ``.ots`` is exported. Batches pending past
  ``anchor.stale_after`` are logged and counted; past ``anchor.resubmit_after``
  their root goes to other calendars once.

An attestation is a calendar's claim until checked. With a header source
(``anchor.bitcoind``, or two different ``anchor.esplora`` explorers that agree),
each Bitcoin attestation is checked against the header at its height: block hash,
proof of work, Merkle root. One that fails is logged with the calendar that sent
it, counted (``on_rejected``) and discarded; the others are kept. A batch is
'confirmed' once one checks (its height and block time are that attestation's);
attestations that could not be checked then (source unreachable) are dropped, so
that every attestation of a confirmed batch checks. Without a header source, or
while it cannot answer, a batch with attestations is 'attested': not verified,
everything kept, upgraded again each round until a source checks it.

Each round works on several batches at once: a backlog becomes all its batches in
one round, and submissions, retries and upgrades go to the calendars together,
never more than ``anchor.calendar_concurrency`` requests at once to one calendar
host (both workers share that limit). A calendar that times out costs a round
batches / calendar_concurrency timeouts, not one per batch.

Calendar replies are refused above 10,000 bytes, as the reference client does.
Run time uses the ``opentimestamps`` library, never ``otsclient``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from opentimestamps.core.serialize import DeserializationError
from opentimestamps.core.timestamp import Timestamp

from relay.anchor import merkle
from relay.anchor.fetch import ReplyTooLarge, read_bounded
from relay.anchor.headers import AgreeingSources, BitcoindSource, EsploraSource, HeaderSource
from relay.anchor.tsa import TSAClient, TSAError
from relay.backoff import Backoff
from relay.config import AnchorConfig, TSAConfig, header_sources_problem
from relay.errors import AnchorError, ConfigError, ConflictError, HeaderSourceError
from relay.evidence.ots_verify import check_attestation
from relay.evidence.tsa_proof import TokenProof
from relay.store import NewAnchorBatch, Store
from relay.store import tsa as tsa_store
from relay.store.anchoring import AnchorLeaf
from relay.store.states import BatchState

log = logging.getLogger("estampille.anchor")

MAX_REPLY_BYTES = 10_000  # the reference client's limit for a calendar reply
PENDING_REPLY = "Pending confirmation in Bitcoin blockchain"
HEADERS = {"Accept": "application/vnd.opentimestamps.v1", "User-Agent": "Estampille"}
POLL_SECONDS = 5.0  # how often the batching worker checks whether max_batch leaves are waiting
# Leaves of batches formed and not yet stored, at most (one batch always): each holds its tree in memory while
# its calendars answer, and a 10^6-leaf batch alone takes some 700 MB to form (bench/anchor_bench.py).
MAX_LEAVES_FORMED = 2**17

T = TypeVar("T")
R = TypeVar("R")


def header_source(config: AnchorConfig) -> HeaderSource | None:
    """The source of block headers ``anchor.bitcoind`` and ``anchor.esplora`` name (all must agree); None if none.

    ConfigError for one explorer alone, or one given twice: neither checks anything.
    """
    problem = header_sources_problem(config)
    if problem:
        raise ConfigError(problem)
    sources: list[HeaderSource] = [BitcoindSource(config.bitcoind, timeout=config.timeout)] if config.bitcoind else []
    sources += [EsploraSource(url, timeout=config.timeout) for url in config.esplora]
    if not sources:
        return None
    return sources[0] if len(sources) == 1 else AgreeingSources(sources)


async def _each(items: Sequence[T], work: Callable[[T], Awaitable[R]], at_once: int) -> list[R]:
    """``work(item)`` for every item, at most ``at_once`` together; results in order.

    The first failure cancels the rest and is raised as it is (not in an ExceptionGroup: callers map it).
    """
    slots = asyncio.Semaphore(at_once)

    async def one(item: T) -> R:
        async with slots:
            return await work(item)

    tasks = [asyncio.create_task(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        await _cancel(tasks)


async def _cancel(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel those of ``tasks`` still running and wait for them: none outlives the round that started it."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def calendar_url(base: str, path: str) -> str:
    """``base``/``path``; urljoin would drop the last segment of a base without a trailing slash."""
    return base.rstrip("/") + "/" + path


class CalendarClient:
    """The two requests of the OpenTimestamps calendar protocol, with bounded replies.

    At most ``per_host`` requests are in flight at once to one host (and port), whatever
    asks; a request's timeout starts once it has its slot, so waiting for one is no failure.
    """

    def __init__(self, session: aiohttp.ClientSession, timeout: float, per_host: int) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._per_host = per_host
        self._slots: dict[str, asyncio.Semaphore] = {}  # by host: configured or allowed calendars only
        self.asked = 0  # requests made, and answered (a reply of the protocol, "pending" included)
        self.answered = 0

    def _slot(self, calendar: str) -> asyncio.Semaphore:
        host = urlsplit(calendar).netloc.lower()
        return self._slots.setdefault(host, asyncio.Semaphore(self._per_host))

    async def submit(self, calendar: str, digest: bytes) -> Timestamp:
        """POST ``digest`` to ``calendar``; the reply's operations from ``digest`` (AnchorError if unusable)."""
        self.asked += 1
        try:
            async with self._slot(calendar), self._session.post(
                calendar_url(calendar, "digest"), data=digest, headers=HEADERS, timeout=self._timeout
            ) as resp:
                body = await read_bounded(resp, MAX_REPLY_BYTES)
                if resp.status != 200:
                    raise AnchorError(f"{calendar} answered HTTP {resp.status}")
        except (TimeoutError, aiohttp.ClientError, ReplyTooLarge) as exc:
            raise AnchorError(f"{calendar}: {exc.__class__.__name__} {exc}") from exc
        timestamp = _parse_reply(calendar, body, digest)
        self.answered += 1
        return timestamp

    async def get_timestamp(self, calendar: str, commitment: bytes) -> Timestamp | None:
        """GET the upgrade of ``commitment``; None while the calendar waits for Bitcoin."""
        url = calendar_url(calendar, "timestamp/" + commitment.hex())
        self.asked += 1
        try:
            async with self._slot(calendar), self._session.get(url, headers=HEADERS, timeout=self._timeout) as resp:
                body = await read_bounded(resp, MAX_REPLY_BYTES)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, ReplyTooLarge) as exc:
            raise AnchorError(f"{calendar}: {exc.__class__.__name__} {exc}") from exc
        if status == 404:
            if PENDING_REPLY.encode() not in body:
                log.warning("calendar %s does not know commitment %s", calendar, commitment.hex())
            else:
                self.answered += 1
            return None
        if status != 200:
            raise AnchorError(f"{calendar} answered HTTP {status}")
        timestamp = _parse_reply(calendar, body, commitment)
        self.answered += 1
        return timestamp


def _parse_reply(calendar: str, body: bytes, msg: bytes) -> Timestamp:
    try:
        timestamp = merkle.deserialize_timestamp(body, msg)
    except (DeserializationError, ValueError, TypeError) as exc:
        raise AnchorError(f"{calendar} sent an invalid timestamp: {exc}") from exc
    if not any(True for _ in timestamp.all_attestations()):
        raise AnchorError(f"{calendar} sent a timestamp without attestation")
    return timestamp


@dataclass(frozen=True)
class BatchOutcome:
    """What one submission round did to a batch."""

    batch_id: int
    leaves: int
    accepted: tuple[str, ...]  # calendars holding the root after this round
    state: str


@dataclass(frozen=True)
class _FormedBatch:
    """A batch formed but not yet submitted nor stored: its leaves, their nonces, its tree."""

    rowids: list[int]
    nonces: bytes
    tree: merkle.Tree
    preimage: bytes  # the bytes whose SHA-256 is the root: what a TSA is asked to stamp


@dataclass(frozen=True)
class _Upgraded:
    """What an upgrade round did to one batch."""

    confirmed: bool = False
    attested: bool = False
    stale: bool = False
    resubmitted: bool = False


@dataclass(frozen=True)
class _Checked:
    """A batch's Bitcoin attestations sorted by what their block headers said."""

    verified: tuple[tuple[merkle.Claim, int], ...] = ()  # with the block time
    unchecked: tuple[merkle.Claim, ...] = ()  # no header source, or it could not answer
    rejected: tuple[merkle.Claim, ...] = ()


@dataclass(frozen=True)
class UpgradeReport:
    """What one upgrade round found."""

    checked: int
    confirmed: tuple[int, ...]
    stale: tuple[int, ...]
    resubmitted: tuple[int, ...]
    attested: tuple[int, ...] = ()  # attestations not verified yet (no header source, or it failed)


class Anchorer:
    """Batches leaves, submits roots, upgrades pending batches. Use ``async with``."""

    def __init__(
        self,
        store: Store,
        config: AnchorConfig,
        *,
        clock: Callable[[], float] = time.time,
        randbytes: Callable[[int], bytes] = os.urandom,
        on_rejected: Callable[[str], None] = lambda calendar: None,
        tsa: TSAConfig | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.tsa_config = tsa if tsa is not None and tsa.authorities else None
        self._tsa: TSAClient | None = None
        self._clock = clock
        self._randbytes = randbytes
        self._on_rejected = on_rejected  # called with the calendar of each attestation that fails its check
        self._session: aiohttp.ClientSession | None = None
        self._calendars: CalendarClient | None = None
        self.stale_batches = 0  # batches past anchor.stale_after at the last upgrade round
        self._headers = header_source(config)
        hosts = [urlsplit(url).hostname or "" for url in config.calendars]
        self._allowed = tuple(pattern.lower() for pattern in (*config.allowlist, *hosts) if pattern)
        # A retry round and an upgrade round both rewrite a batch's timestamp from the row they
        # read: run at once, the later write dropped what the earlier added (a confirmed batch
        # went back to 'pending'). One at a time, each reads what the other wrote.
        self._timestamp_rounds = asyncio.Lock()

    async def __aenter__(self) -> Anchorer:
        self._session = aiohttp.ClientSession()
        # One client for both workers: its per-host limit holds across batches and rounds.
        self._calendars = CalendarClient(self._session, self.config.timeout, self.config.calendar_concurrency)
        if self.tsa_config is not None:
            self._tsa = TSAClient(self._session, self.tsa_config)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = self._calendars = self._tsa = None

    @property
    def _client(self) -> CalendarClient:
        if self._calendars is None:
            raise RuntimeError("use Anchorer inside 'async with'")
        return self._calendars

    def allowed(self, calendar: str) -> bool:
        """Whether the upgrade worker may contact ``calendar``: https (http for tests) and a host on the allowlist.

        The URL comes from a calendar's reply: plain http would let anyone on the path answer for it.
        """
        parts = urlsplit(calendar)
        schemes = ("https", "http") if self.config.http_for_tests else ("https",)
        host = (parts.hostname or "").lower()
        return parts.scheme in schemes and bool(host) and any(fnmatch.fnmatchcase(host, p) for p in self._allowed)

    @property
    def tsa_requests(self) -> int:
        """Requests made to TSAs by this Anchorer."""
        return 0 if self._tsa is None else self._tsa.requests

    @property
    def calendars_answered(self) -> tuple[int, int]:
        """Requests made to calendars by this Anchorer, and how many got an answer of the protocol."""
        return self._client.asked, self._client.answered

    # -- batching ----------------------------------------------------------

    async def batch(self) -> BatchOutcome | None:
        """Make one batch of up to ``max_batch`` waiting leaves and submit it; None if none wait."""
        formed = await self._form_batch(frozenset())
        return None if formed is None else await self._submit_batch(formed)

    async def batch_all(self) -> list[BatchOutcome]:
        """Batch every waiting leaf, ``max_batch`` at a time, in this one round, several batches at once.

        A batch is formed as soon as one of ``_batches_at_once`` slots is free, and submitted while the
        next is formed. Its leaves stay unbatched in the store until it is stored: the next ones skip them.
        The first failure stops the round and is raised; batches not stored by then are not stored.
        """
        slots = asyncio.Semaphore(self._batches_at_once)
        forming: set[int] = set()  # row ids of the leaves of batches formed but not stored yet
        tasks: list[asyncio.Task[BatchOutcome]] = []
        failed = False

        async def submit(formed: _FormedBatch) -> BatchOutcome:
            nonlocal failed
            try:
                return await self._submit_batch(formed)
            except BaseException:
                failed = True
                raise
            finally:
                forming.difference_update(formed.rowids)  # stored, or still unbatched in the store
                slots.release()

        try:
            while not failed:
                await slots.acquire()
                # A copy taken before the query: a leaf stored meanwhile left the set only once committed.
                formed = await self._form_batch(frozenset(forming))
                if formed is None:
                    break
                full = len(formed.rowids) == self.config.max_batch
                forming.update(formed.rowids)
                tasks.append(asyncio.create_task(submit(formed)))
                del formed  # one large batch at a time is not kept while the next is formed
                if not full:
                    break
            return list(await asyncio.gather(*tasks))
        finally:
            await _cancel(tasks)

    @property
    def _batches_at_once(self) -> int:
        """As many as one calendar takes requests at once (more would wait for it), within MAX_LEAVES_FORMED."""
        return max(1, min(self.config.calendar_concurrency, MAX_LEAVES_FORMED // self.config.max_batch))

    async def _form_batch(self, skip: frozenset[int]) -> _FormedBatch | None:
        """Nonces and Merkle tree of the oldest ``max_batch`` waiting leaves not in ``skip``; None if none."""
        leaves = await self.store.unbatched_leaves(self.config.max_batch + len(skip))
        if skip:
            leaves = [leaf for leaf in leaves if leaf[0] not in skip][: self.config.max_batch]
        if not leaves:
            return None
        digests = [bytes.fromhex(digest) for _, digest in leaves]
        rowids = [rowid for rowid, _ in leaves]
        del leaves  # a million rows weigh a few hundred megabytes
        nonces = self._randbytes(merkle.NONCE_BYTES * len(rowids))
        tree = await asyncio.to_thread(merkle.Tree.build, digests, nonces)
        preimage = tree.levels[-2] if tree.size > 1 else digests[0] + nonces  # see merkle.Tree: sha256 of it is the root
        return _FormedBatch(rowids, nonces, tree, preimage)

    async def _submit_batch(self, formed: _FormedBatch) -> BatchOutcome:
        """Submit a formed batch's root to every calendar; store the batch, its tree and the replies."""
        tree = formed.tree
        root = Timestamp(tree.root)
        # Asked first and at once beside the calendars: the token exists within seconds of the records,
        # and a slow or failing TSA delays no calendar (it is awaited once the batch is stored).
        token = None if self._tsa is None else asyncio.create_task(self._tsa.stamp(formed.preimage, self._clock()))
        try:
            replies = await self._submit(root, self.config.calendars)
        except BaseException:
            await _cancel([token] if token is not None else [])
            raise
        now = self._clock()
        state, next_at = self._after_submission(len(replies), attempts=1, now=now)
        batch_id = await self.store.save_anchor_batch(
            NewAnchorBatch(
                root=tree.root,
                created_at=now,
                state=state,
                next_attempt_at=next_at,
                timestamp=merkle.serialize_timestamp(root) if replies else None,
                rowids=formed.rowids,
                nonces=formed.nonces,
                levels=tree.levels,
                replies=tuple(replies.items()),
            )
        )
        if token is not None:
            # Recorded before the answer is awaited: a relay stopped meanwhile asks again after a restart.
            assert self.tsa_config is not None
            await tsa_store.save_waiting(self.store, batch_id, formed.preimage, attempts=0,
                                         next_attempt_at=now + self.tsa_config.retry_first, error="asked, no answer yet")
            await self._store_token(batch_id, formed.preimage, token, attempts=1)
        leaves = len(formed.rowids)
        log.info("batch %d: %d leaves, root %s, accepted by %d calendar(s), %s",
                 batch_id, leaves, tree.root.hex(), len(replies), state)
        return BatchOutcome(batch_id, leaves, tuple(sorted(replies)), state)

    async def _submit(self, root: Timestamp, calendars: Iterable[str]) -> dict[str, bytes]:
        """POST the root to ``calendars`` in parallel; merge the good replies into ``root``."""
        calendars = list(calendars)
        results = await asyncio.gather(
            *(self._client.submit(url, root.msg) for url in calendars), return_exceptions=True
        )
        replies: dict[str, bytes] = {}
        for url, result in zip(calendars, results, strict=True):
            if isinstance(result, AnchorError):
                log.warning("calendar %s refused or failed: %s", url, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                root.merge(result)
                replies[url] = merkle.serialize_timestamp(result)
        return replies

    def _after_submission(self, accepted: int, *, attempts: int, now: float) -> tuple[BatchState, float]:
        if accepted >= self.config.min_calendars:
            return BatchState.PENDING, now + self.config.upgrade_interval
        delay = Backoff(self.config.retry_first, self.config.retry_max).delay(attempts, random.random())
        return BatchState.SUBMITTING, now + delay

    async def _store_token(self, batch_id: int, preimage: bytes, stamping: Awaitable[tsa_store.Stamp],
                           *, attempts: int) -> bool:
        """Store the batch's token once ``stamping`` gives it, or its failure with the time to ask again."""
        assert self.tsa_config is not None
        try:
            stamp = await stamping
        except TSAError as exc:
            delay = Backoff(self.tsa_config.retry_first, self.tsa_config.retry_max).delay(attempts, random.random())
            await tsa_store.save_waiting(self.store, batch_id, preimage, attempts=attempts,
                                         next_attempt_at=self._clock() + delay, error=str(exc))
            log.warning("batch %d: no RFC 3161 token (attempt %d), asking again in %.0f s", batch_id, attempts, delay)
            return False
        await tsa_store.save_stamped(self.store, batch_id, preimage, stamp, attempts=attempts)
        log.info("batch %d: RFC 3161 token from %s", batch_id, stamp.authority)
        return True

    async def retry_tokens(self) -> int:
        """Ask again for the due tokens of batches that have none; how many were stamped."""
        if self._tsa is None:
            return 0
        stamped = 0
        for row in await tsa_store.due_tokens(self.store, self._clock()):
            stamping = self._tsa.stamp(row["preimage"], self._clock())
            stamped += await self._store_token(row["batch_id"], row["preimage"], stamping, attempts=row["attempts"] + 1)
        return stamped

    async def retry_submissions(self) -> list[BatchOutcome]:
        """Submit again every due batch that fewer than ``min_calendars`` calendars accepted, several at once."""
        async with self._timestamp_rounds:
            rows = await self.store.anchor_batches([BatchState.SUBMITTING], due_before=self._clock())
            return await _each(rows, self._retry_submission, self.config.calendar_concurrency)

    async def _retry_submission(self, row) -> BatchOutcome:
        accepted = await self.store.anchor_reply_calendars(row.id)
        targets = [url for url in self.config.calendars if url not in accepted]
        root = self._root_timestamp(row)
        replies = await self._submit(root, targets)
        now = self._clock()
        total = accepted | set(replies)
        state, next_at = self._after_submission(len(total), attempts=row.attempts + 1, now=now)
        await self.store.update_anchor_batch(
            row.id,
            now=now,
            timestamp=merkle.serialize_timestamp(root) if total else None,
            state=state,
            next_attempt_at=next_at,
            replies=replies.items(),
            attempted=True,
        )
        log.info("batch %d: retry %d, accepted by %d calendar(s), %s", row.id, row.attempts, len(total), state)
        return BatchOutcome(row.id, row.leaves, tuple(sorted(total)), state)

    @staticmethod
    def _root_timestamp(row) -> Timestamp:
        if row.timestamp is None:
            return Timestamp(row.root)
        return merkle.deserialize_timestamp(row.timestamp, row.root)

    # -- upgrading ---------------------------------------------------------

    async def upgrade(self) -> UpgradeReport:
        """One upgrade round over every unconfirmed batch that some calendar holds, several at once."""
        async with self._timestamp_rounds:
            now = self._clock()
            rows = [r for r in await self.store.anchor_batches([BatchState.SUBMITTING, BatchState.PENDING, BatchState.ATTESTED])
                    if r.timestamp is not None]
            headers: dict[int, asyncio.Task[bytes]] = {}  # fetched once per round, however many batches a block confirms
            try:
                done = await _each(rows, lambda row: self._upgrade_batch(row, now, headers),
                                   self.config.calendar_concurrency)
            finally:
                await _cancel(headers.values())
        confirmed = [row.id for row, d in zip(rows, done, strict=True) if d.confirmed]
        stale = [row.id for row, d in zip(rows, done, strict=True) if d.stale]
        resubmitted = [row.id for row, d in zip(rows, done, strict=True) if d.resubmitted]
        attested = [row.id for row, d in zip(rows, done, strict=True) if d.attested]
        self.stale_batches = len(stale)
        if stale:
            log.warning("%d batch(es) pending for more than %d s: %s", len(stale), self.config.stale_after,
                        ", ".join(map(str, stale)))
        return UpgradeReport(len(rows), tuple(confirmed), tuple(stale), tuple(resubmitted), tuple(attested))

    async def _upgrade_batch(self, row, now: float, headers: dict[int, asyncio.Task[bytes]]) -> _Upgraded:
        """Upgrade one batch and check its attestations; count it stale, or resubmit it, while none checks."""
        root = self._root_timestamp(row)
        changed = await self._upgrade_timestamp(root)
        checked = await self._check(row.id, merkle.bitcoin_claims(root), headers)
        if checked.verified:
            # Every attestation of a confirmed batch checks: its proofs carry them all.
            for claim in checked.unchecked:
                log.warning("batch %d: attestation at height %d from %s could not be checked; dropped, the batch"
                            " being confirmed by another", row.id, claim.height, claim.calendar or "?")
            drop = (*checked.rejected, *checked.unchecked)
            (first, block_time) = checked.verified[0]
            state, height = BatchState.CONFIRMED, first.height
        else:
            drop, block_time = checked.rejected, None
            state = BatchState.ATTESTED if checked.unchecked else (BatchState.PENDING if row.state == BatchState.ATTESTED else row.state)
            height = checked.unchecked[0].height if checked.unchecked else None
        for claim in drop:
            merkle.discard(root, claim)
        if changed or drop or state != row.state:
            await self.store.update_anchor_batch(
                row.id, now=now, timestamp=merkle.serialize_timestamp(root), state=state,
                next_attempt_at=row.next_attempt_at, bitcoin_height=height, block_time=block_time,
            )
        if state == BatchState.CONFIRMED:
            log.info("batch %d confirmed in Bitcoin block %d (checked against its header)", row.id, height)
            return _Upgraded(confirmed=True)
        if state == BatchState.ATTESTED:
            if row.state != BatchState.ATTESTED:
                log.info("batch %d attested in Bitcoin block %d by a calendar; not verified (%s)", row.id, height,
                         "no header source" if self._headers is None else "its header could not be read")
            return _Upgraded(attested=True)
        age = now - row.created_at
        resubmit = age > self.config.resubmit_after and row.resubmitted_at is None
        if resubmit:
            await self._resubmit(row, root)
        return _Upgraded(stale=age > self.config.stale_after, resubmitted=resubmit)

    async def _check(
        self, batch_id: int, claims: list[merkle.Claim], headers: dict[int, asyncio.Task[bytes]]
    ) -> _Checked:
        """Each claim checked against the header at its height; unchecked, all of them, without a header source.

        ``headers`` holds this round's header requests by height: each is asked once (explorers limit rates).
        A claim that fails its check is logged with its calendar and counted.
        """
        if self._headers is None or not claims:
            return _Checked(unchecked=tuple(claims))
        verified, unchecked, rejected = [], [], []
        for claim in claims:
            if claim.height not in headers:
                headers[claim.height] = asyncio.create_task(self._headers.header(claim.height))
            try:
                raw = await asyncio.shield(headers[claim.height])  # one batch cancelled does not cancel the others'
            except HeaderSourceError as exc:
                log.warning("batch %d: cannot check the attestation at height %d from %s yet: %s", batch_id,
                            claim.height, claim.calendar or "?", exc)
                unchecked.append(claim)
                continue
            result = check_attestation(claim.msg, claim.height, {claim.height: raw}, regtest=self.config.regtest)
            if result.ok and result.block_time is not None:
                verified.append((claim, result.block_time))
            else:
                log.warning("batch %d: calendar %s sent a Bitcoin attestation at height %d that does not check: %s;"
                            " discarded", batch_id, claim.calendar or "?", claim.height, result.reason)
                self._on_rejected(claim.calendar)
                rejected.append(claim)
        return _Checked(tuple(verified), tuple(unchecked), tuple(rejected))

    async def _upgrade_timestamp(self, root: Timestamp) -> bool:
        """Ask each allowed calendar for its pending commitments that have no Bitcoin attestation; graft what
        they return."""
        asks = []
        for commitment, calendar in merkle.unanswered_calendars(root):
            if self.allowed(calendar):
                asks.append((commitment, calendar))
            else:
                log.warning("calendar %s is not an https URL on the allowlist: not contacted", calendar)
        results = await asyncio.gather(
            *(self._client.get_timestamp(calendar, commitment) for commitment, calendar in asks),
            return_exceptions=True,
        )
        changed = False
        for (_, calendar), result in zip(asks, results, strict=True):
            if isinstance(result, AnchorError):
                log.warning("upgrade from %s failed: %s", calendar, result)
            elif isinstance(result, BaseException):
                raise result
            elif result is not None:
                changed = merkle.graft(root, result) or changed
        return changed

    async def _resubmit(self, row, root: Timestamp) -> None:
        """Send a long-pending root to the configured calendars that do not hold it (all, if every one does)."""
        accepted = await self.store.anchor_reply_calendars(row.id)
        targets = [url for url in self.config.calendars if url not in accepted] or list(self.config.calendars)
        replies = await self._submit(root, targets)
        await self.store.update_anchor_batch(
            row.id, now=self._clock(), timestamp=merkle.serialize_timestamp(root), state=row.state,
            next_attempt_at=row.next_attempt_at, replies=replies.items(), resubmitted=True,
        )
        log.warning("batch %d resubmitted to %s; accepted by %d", row.id, ", ".join(targets), len(replies))

    # -- workers -----------------------------------------------------------

    async def run_batches(self) -> None:
        """Batching worker: runs until cancelled; a failed round is logged and tried again."""
        last = self._clock()
        while True:
            try:
                now = self._clock()
                waiting = (await self.store.anchor_summary()).unbatched
                if waiting >= self.config.max_batch or (waiting and now - last >= self.config.interval):
                    await self.batch_all()
                    last = now
                elif not waiting and now - last >= self.config.interval:
                    last = now
                await self.retry_submissions()
                await self.retry_tokens()
            except ConflictError as exc:  # `estampille anchor --now` beside the relay, say
                log.warning("anchoring round stopped: %s; the leaves left wait for the next round", exc)
            except Exception:
                log.exception("anchoring round failed; trying again")
            await asyncio.sleep(min(POLL_SECONDS, self.config.interval))

    async def run_upgrades(self) -> None:
        """Upgrade worker: one round every ``upgrade_interval`` seconds until cancelled."""
        while True:
            try:
                await self.upgrade()
            except Exception:
                log.exception("upgrade round failed; trying again")
            await asyncio.sleep(self.config.upgrade_interval)

    async def run(self) -> None:
        """Both workers, until cancelled."""
        await asyncio.gather(self.run_batches(), self.run_upgrades())


async def export_ots(store: Store, digest: str) -> bytes:
    """The standalone ``.ots`` proof of one evidence record (its canonical JSON bytes are the file).

    A confirmed batch gives the paths to its Bitcoin attestations, every one of
    which was checked against its block header; a pending or attested one gives
    everything it holds (``ots upgrade`` completes it; an attested one's Bitcoin
    attestations are unverified claims). NotFoundError for an unknown digest, AnchorError while the
    record is not yet batched or no calendar holds its batch.
    """
    row = await store.anchor_leaf(digest)
    if row.batch_id is None:
        raise AnchorError(f"record {digest} is not batched yet (run 'estampille anchor --now')")
    return _leaf_ots(digest, row, await _leaf_path(store, row))


def _leaf_ots(digest: str, row: AnchorLeaf, path: list[merkle.Step]) -> bytes:
    if row.timestamp is None:
        raise AnchorError(f"record {digest} is in batch {row.batch_id}, which no calendar has accepted yet")
    root = merkle.deserialize_timestamp(row.timestamp, row.root)
    if row.state == BatchState.CONFIRMED:
        root = merkle.bitcoin_branches(root) or root
    try:
        return merkle.leaf_ots(bytes.fromhex(digest), row.nonce, path, root)
    except ValueError as exc:
        raise AnchorError(f"stored path of record {digest} does not reach its batch root") from exc


async def _leaf_path(store: Store, row: AnchorLeaf) -> list[merkle.Step]:
    """A batched leaf's steps to its batch root (``row``: Store.anchor_leaf's)."""
    positions = merkle.sibling_positions(row.leaves, row.position)
    nodes = await store.anchor_nodes(row.batch_id, [(level, index) for level, index, _ in positions])
    return [merkle.Step(append, nodes[(level, index)]) for level, index, append in positions]


async def export_leaf(
    store: Store, digest: str, tokens: dict[int, tsa_store.StoredToken | None]
) -> tuple[bytes | None, TokenProof | None]:
    """A batched record's ``.ots`` (None while no calendar holds its batch) and its way to its batch's
    RFC 3161 token (None while the batch has none), its leaf and path read once, for a bundle.

    ``tokens`` keeps each batch's token across the records of one bundle."""
    row = await store.anchor_leaf(digest)
    if row.batch_id is None:
        return None, None
    path = await _leaf_path(store, row)
    ots = _leaf_ots(digest, row, path) if row.timestamp is not None else None
    if row.batch_id not in tokens:
        tokens[row.batch_id] = await tsa_store.token_of_batch(store, row.batch_id)
    token = tokens[row.batch_id]
    if token is None:
        return ots, None
    steps = tuple(("append" if step.append else "prepend", step.sibling) for step in path)
    stamp = token.stamp
    return ots, TokenProof(digest, row.nonce, steps, token.root, stamp.authority, stamp.qualified,
                           stamp.trust_list, stamp.tsr, stamp.chain_pem)


# -- commands (called by relay.cli) -------------------------------------------


@dataclass(frozen=True)
class AnchorRun:
    """What ``estampille anchor --now`` did: lines for people; ``unanswered`` when calendars were asked and none answered."""

    lines: list[str]
    unanswered: bool


async def anchor_now(store: Store, config: AnchorConfig, tsa: TSAConfig | None = None) -> AnchorRun:
    """Batch every waiting leaf (with its RFC 3161 token), retry due submissions and tokens, run one upgrade round now."""
    async with Anchorer(store, config, tsa=tsa) as anchorer:
        outcomes = await anchorer.batch_all() + await anchorer.retry_submissions()
        await anchorer.retry_tokens()
        report = await anchorer.upgrade()
        asked, answered = anchorer.calendars_answered
    lines = [f"batch {o.batch_id}: {o.leaves} leaves, accepted by {len(o.accepted)} calendar(s), {o.state}"
             for o in outcomes] or ["no leaf waiting"]
    lines.append(f"upgrade: {report.checked} batch(es) checked, {len(report.confirmed)} confirmed"
                 + (f", {len(report.attested)} attested (not verified)" if report.attested else "")
                 + (f", {len(report.stale)} stale" if report.stale else ""))
    if asked and not answered:
        lines.append(f"no calendar answered ({asked} request(s))")
    return AnchorRun(lines, unanswered=bool(asked) and not answered)


async def anchor_status(store: Store, config: AnchorConfig, now: float) -> list[str]:
    """Pending leaves, unconfirmed batches with their age, confirmed batches: lines for people."""
    summary = await store.anchor_summary()
    oldest = summary.oldest_queued_at
    lines = [f"pending leaves: {summary.unbatched}"
             + (f" (oldest queued {_age(now - oldest)} ago)" if oldest is not None else "")]
    for row in await store.anchor_batches([BatchState.SUBMITTING, BatchState.PENDING, BatchState.ATTESTED]):
        accepted = len(await store.anchor_reply_calendars(row.id))
        line = (f"batch {row.id}: {row.state}, {row.leaves} leaves, {_age(now - row.created_at)} old,"
                f" accepted by {accepted} calendar(s)")
        if row.state == BatchState.ATTESTED:
            line += f", Bitcoin block {row.bitcoin_height} NOT VERIFIED (no header source could check it)"
        if row.state == BatchState.SUBMITTING:
            line += f", next try in {_age(max(0.0, row.next_attempt_at - now))}"
        if now - row.created_at > config.stale_after:
            line += ", STALE"
        lines.append(line)
    for row in await tsa_store.waiting_tokens(store):
        lines.append(f"batch {row['batch_id']}: no RFC 3161 token yet after {row['attempts']} attempt(s), next in"
                     f" {_age(max(0.0, row['next_attempt_at'] - now))}: {row['last_error']}")
    lines.append(f"confirmed batches: {summary.confirmed_batches} ({summary.confirmed_leaves} leaves)"
                 + (f", last at Bitcoin height {summary.last_height}" if summary.last_height is not None else ""))
    return lines


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
