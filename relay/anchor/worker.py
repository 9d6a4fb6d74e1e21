"""Anchoring evidence in Bitcoin through OpenTimestamps calendars: the I/O half of ``relay.anchor.merkle``.

Two workers, both driven by :class:`Anchorer`:

- batching: every ``anchor.interval`` seconds, or as soon as ``anchor.max_batch``
  leaves wait, the waiting leaves become one batch: a nonce per leaf, one Merkle
  tree, and its root POSTed in parallel to every configured calendar (one request
  per calendar, whatever the batch size). The batch, the replies and the tree
  are stored in one transaction. With fewer than ``anchor.min_calendars``
  replies the batch stays 'submitting' and is retried with backoff (only the
  calendars that have not answered); it is never dropped.
- upgrading: every ``anchor.upgrade_interval`` seconds, each pending batch's
  pending attestations are looked up at their calendar, by the commitment that
  carries the attestation, if the calendar's host is allowed (``anchor.allowlist``
  plus the configured calendars). Bitcoin attestations are merged into the
  batch; leaves get them when their ``.ots`` is exported. Batches pending past
  ``anchor.stale_after`` are logged and counted; past ``anchor.resubmit_after``
  their root goes to other calendars once. With ``anchor.esplora`` or
  ``anchor.bitcoind`` set, a batch's confirmation also records the block time,
  read from the header at its height once that header's proof of work and
  Merkle root check out against the attestation (else the time stays unknown).

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
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from opentimestamps.core.notary import BitcoinBlockHeaderAttestation
from opentimestamps.core.serialize import DeserializationError
from opentimestamps.core.timestamp import Timestamp

from relay.anchor import merkle
from relay.anchor.fetch import ReplyTooLarge, read_bounded
from relay.anchor.headers import AgreeingSources, BitcoindSource, EsploraSource, HeaderSource
from relay.anchor.ots_verify import check_attestation
from relay.config import AnchorConfig
from relay.errors import AnchorError, ConflictError, HeaderSourceError
from relay.store import NewAnchorBatch, Store
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
    """The source of block headers ``anchor.bitcoind`` and ``anchor.esplora`` name (all must agree); None if none."""
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

    def _slot(self, calendar: str) -> asyncio.Semaphore:
        host = urlsplit(calendar).netloc.lower()
        return self._slots.setdefault(host, asyncio.Semaphore(self._per_host))

    async def submit(self, calendar: str, digest: bytes) -> Timestamp:
        """POST ``digest`` to ``calendar``; the reply's operations from ``digest`` (AnchorError if unusable)."""
        try:
            async with self._slot(calendar), self._session.post(
                calendar_url(calendar, "digest"), data=digest, headers=HEADERS, timeout=self._timeout
            ) as resp:
                body = await read_bounded(resp, MAX_REPLY_BYTES)
                if resp.status != 200:
                    raise AnchorError(f"{calendar} answered HTTP {resp.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError, ReplyTooLarge) as exc:
            raise AnchorError(f"{calendar}: {exc.__class__.__name__} {exc}") from exc
        return _parse_reply(calendar, body, digest)

    async def get_timestamp(self, calendar: str, commitment: bytes) -> Timestamp | None:
        """GET the upgrade of ``commitment``; None while the calendar waits for Bitcoin."""
        url = calendar_url(calendar, "timestamp/" + commitment.hex())
        try:
            async with self._slot(calendar), self._session.get(url, headers=HEADERS, timeout=self._timeout) as resp:
                body = await read_bounded(resp, MAX_REPLY_BYTES)
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ReplyTooLarge) as exc:
            raise AnchorError(f"{calendar}: {exc.__class__.__name__} {exc}") from exc
        if status == 404:
            if PENDING_REPLY.encode() not in body:
                log.warning("calendar %s does not know commitment %s", calendar, commitment.hex())
            return None
        if status != 200:
            raise AnchorError(f"{calendar} answered HTTP {status}")
        return _parse_reply(calendar, body, commitment)


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


@dataclass(frozen=True)
class _Upgraded:
    """What an upgrade round did to one batch."""

    confirmed: bool = False
    stale: bool = False
    resubmitted: bool = False


@dataclass(frozen=True)
class UpgradeReport:
    """What one upgrade round found."""

    checked: int
    confirmed: tuple[int, ...]
    stale: tuple[int, ...]
    resubmitted: tuple[int, ...]


class Anchorer:
    """Batches leaves, submits roots, upgrades pending batches. Use ``async with``."""

    def __init__(
        self,
        store: Store,
        config: AnchorConfig,
        *,
        clock: Callable[[], float] = time.time,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self.config = config
        self._clock = clock
        self._randbytes = randbytes
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

    async def __aenter__(self) -> "Anchorer":
        self._session = aiohttp.ClientSession()
        # One client for both workers: its per-host limit holds across batches and rounds.
        self._calendars = CalendarClient(self._session, self.config.timeout, self.config.calendar_concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = self._calendars = None

    @property
    def _client(self) -> CalendarClient:
        if self._calendars is None:
            raise RuntimeError("use Anchorer inside 'async with'")
        return self._calendars

    def allowed(self, calendar: str) -> bool:
        """Whether the upgrade worker may contact ``calendar`` (its host matches the allowlist)."""
        host = (urlsplit(calendar).hostname or "").lower()
        return bool(host) and any(fnmatch.fnmatchcase(host, pattern) for pattern in self._allowed)

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
        return _FormedBatch(rowids, nonces, tree)

    async def _submit_batch(self, formed: _FormedBatch) -> BatchOutcome:
        """Submit a formed batch's root to every calendar; store the batch, its tree and the replies."""
        tree = formed.tree
        root = Timestamp(tree.root)
        replies = await self._submit(root, self.config.calendars)
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
        for url, result in zip(calendars, results):
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
        delay = min(self.config.retry_first * 2 ** (attempts - 1), self.config.retry_max)
        return BatchState.SUBMITTING, now + delay

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
            rows = [r for r in await self.store.anchor_batches([BatchState.SUBMITTING, BatchState.PENDING]) if r.timestamp is not None]
            headers: dict[int, asyncio.Task[bytes]] = {}  # fetched once per round, however many batches a block confirms
            try:
                done = await _each(rows, lambda row: self._upgrade_batch(row, now, headers),
                                   self.config.calendar_concurrency)
            finally:
                await _cancel(headers.values())
        confirmed = [row.id for row, d in zip(rows, done) if d.confirmed]
        stale = [row.id for row, d in zip(rows, done) if d.stale]
        resubmitted = [row.id for row, d in zip(rows, done) if d.resubmitted]
        self.stale_batches = len(stale)
        if stale:
            log.warning("%d batch(es) pending for more than %d s: %s", len(stale), self.config.stale_after,
                        ", ".join(map(str, stale)))
        return UpgradeReport(len(rows), tuple(confirmed), tuple(stale), tuple(resubmitted))

    async def _upgrade_batch(self, row, now: float, headers: dict[int, asyncio.Task[bytes]]) -> _Upgraded:
        """Upgrade one batch; count it stale, or resubmit it, while Bitcoin has not confirmed it."""
        root = self._root_timestamp(row)
        changed = await self._upgrade_timestamp(root)
        heights = merkle.bitcoin_heights(root)
        if changed:
            state = BatchState.CONFIRMED if heights else row.state
            await self.store.update_anchor_batch(
                row.id, now=now, timestamp=merkle.serialize_timestamp(root), state=state,
                next_attempt_at=row.next_attempt_at, bitcoin_height=heights[0] if heights else None,
                block_time=await self._block_time(row.id, root, heights[0], headers) if heights else None,
            )
            if heights:
                log.info("batch %d confirmed in Bitcoin block %d", row.id, heights[0])
                return _Upgraded(confirmed=True)
        age = now - row.created_at
        resubmit = age > self.config.resubmit_after and row.resubmitted_at is None
        if resubmit:
            await self._resubmit(row, root)
        return _Upgraded(stale=age > self.config.stale_after, resubmitted=resubmit)

    async def _block_time(
        self, batch_id: int, root: Timestamp, height: int, headers: dict[int, asyncio.Task[bytes]]
    ) -> int | None:
        """The time of the block at ``height`` if a header source gives a header every attestation there checks
        against; None (logged) otherwise: the batch is confirmed all the same, its height being known.
        ``headers`` holds this round's header requests by height: each is asked once (explorers limit rates)."""
        if self._headers is None:
            return None
        if height not in headers:
            headers[height] = asyncio.create_task(self._headers.header(height))
        try:
            raw = await asyncio.shield(headers[height])  # one batch cancelled does not cancel the others' fetch
        except HeaderSourceError as exc:
            log.warning("batch %d: no block time for height %d: %s", batch_id, height, exc)
            return None
        results = [
            check_attestation(msg, height, {height: raw}, regtest=self.config.regtest)
            for msg, att in root.all_attestations()
            if isinstance(att, BitcoinBlockHeaderAttestation) and att.height == height
        ]
        failed = next((r for r in results if not r.ok), None)
        if failed is not None:
            log.warning("batch %d: no block time for height %d: %s", batch_id, height, failed.reason)
            return None
        return results[0].block_time

    async def _upgrade_timestamp(self, root: Timestamp) -> bool:
        """Ask each allowed calendar for its pending commitments; graft what they return."""
        asks = []
        for commitment, calendar in merkle.pending_calendars(root):
            if self.allowed(calendar):
                asks.append((commitment, calendar))
            else:
                log.warning("calendar %s is not on the allowlist: not contacted", calendar)
        results = await asyncio.gather(
            *(self._client.get_timestamp(calendar, commitment) for commitment, calendar in asks),
            return_exceptions=True,
        )
        changed = False
        for (commitment, calendar), result in zip(asks, results):
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

    A confirmed batch gives the single path to its lowest Bitcoin attestation;
    a pending one gives every calendar's pending attestation (``ots upgrade``
    completes it). NotFoundError for an unknown digest, AnchorError while the
    record is not yet batched or no calendar holds its batch.
    """
    row = await store.anchor_leaf(digest)
    if row.batch_id is None:
        raise AnchorError(f"record {digest} is not batched yet (run 'estampille anchor --now')")
    if row.timestamp is None:
        raise AnchorError(f"record {digest} is in batch {row.batch_id}, which no calendar has accepted yet")
    root = merkle.deserialize_timestamp(row.timestamp, row.root)
    if row.state == BatchState.CONFIRMED:
        root = merkle.bitcoin_branch(root) or root
    positions = merkle.sibling_positions(row.leaves, row.position)
    nodes = await store.anchor_nodes(row.batch_id, [(level, index) for level, index, _ in positions])
    path = [merkle.Step(append, nodes[(level, index)]) for level, index, append in positions]
    try:
        return merkle.leaf_ots(bytes.fromhex(digest), row.nonce, path, root)
    except ValueError as exc:
        raise AnchorError(f"stored path of record {digest} does not reach its batch root") from exc



# -- commands (called by relay.cli) -------------------------------------------


async def anchor_now(store: Store, config: AnchorConfig) -> list[str]:
    """Batch every waiting leaf, retry due submissions and run one upgrade round now; lines for people."""
    async with Anchorer(store, config) as anchorer:
        outcomes = await anchorer.batch_all() + await anchorer.retry_submissions()
        report = await anchorer.upgrade()
    lines = [f"batch {o.batch_id}: {o.leaves} leaves, accepted by {len(o.accepted)} calendar(s), {o.state}"
             for o in outcomes] or ["no leaf waiting"]
    lines.append(f"upgrade: {report.checked} batch(es) checked, {len(report.confirmed)} confirmed"
                 + (f", {len(report.stale)} stale" if report.stale else ""))
    return lines


async def anchor_status(store: Store, config: AnchorConfig, now: float) -> list[str]:
    """Pending leaves, unconfirmed batches with their age, confirmed batches: lines for people."""
    summary = await store.anchor_summary()
    oldest = summary.oldest_queued_at
    lines = [f"pending leaves: {summary.unbatched}"
             + (f" (oldest queued {_age(now - oldest)} ago)" if oldest is not None else "")]
    for row in await store.anchor_batches([BatchState.SUBMITTING, BatchState.PENDING]):
        accepted = len(await store.anchor_reply_calendars(row.id))
        line = (f"batch {row.id}: {row.state}, {row.leaves} leaves, {_age(now - row.created_at)} old,"
                f" accepted by {accepted} calendar(s)")
        if row.state == BatchState.SUBMITTING:
            line += f", next try in {_age(max(0.0, row.next_attempt_at - now))}"
        if now - row.created_at > config.stale_after:
            line += ", STALE"
        lines.append(line)
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
