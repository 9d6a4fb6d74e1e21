"""Fake OpenTimestamps calendar, Bitcoin chain, Esplora explorer and bitcoind, all on 127.0.0.1.

Small API for any test that needs anchoring offline::

    chain = FakeChain()                                   # blocks pass REGTEST proof of work
    async with FakeCalendar(chain) as cal:                # cal.url = http://127.0.0.1:PORT
        ...submit roots (POST /digest)...
        height = cal.confirm()                            # mine a block committing every pending digest
    async with EsploraFake(chain) as explorer: ...        # explorer.url for --esplora
    async with BitcoindFake(chain) as node: ...           # node.url = http://user:pass@127.0.0.1:PORT

FakeCalendar speaks the real protocol: ``POST /digest`` (body: the raw digest)
answers the serialized operations from the digest to a commitment carrying a
PendingAttestation(calendar URI); ``GET /timestamp/<commitment hex>`` answers
404 "Pending confirmation in Bitcoin blockchain" until :meth:`FakeCalendar.confirm`,
then the operations from the commitment to a BitcoinBlockHeaderAttestation.
The operations are those opentimestamps-server (otsserver/calendar.py and
stamper.py) writes: digest -> append a 16-byte nonce, sha256 -> the Merkle tree
of the digests received in the same second (``aggregated`` others) -> prepend
the 4-byte time, append an 8-byte MAC (the commitment) || sha256 -> the Merkle
tree of every commitment waiting for a transaction (``other_commitments``
others) -> prepend the 89 bytes of a one-input, two-output segwit transaction up
to its OP_RETURN push, append its 4-byte lock time, sha256 twice (the txid) ->
the block's Merkle tree (``block_txs`` transactions) -> the header's Merkle root.
``FakeCalendar(chain, **MAINNET_LIKE)`` gives proofs as long as a real calendar's.
Switches: ``down`` (answers 503), ``oversize`` (pads replies past 10,000 bytes),
``garbage`` (answers 200 with bytes that are no timestamp), ``delay`` (seconds to wait
before answering: longer than the client's timeout is a calendar that times out),
``attestation_uri`` (the URI written in pending attestations). :meth:`FakeCalendar.forge`
answers every pending commitment with a Bitcoin attestation at a height whose block does not
commit to it (a lying calendar, or someone on the path to it). ``requests``
records every (method, path) received; ``peak_in_flight`` is the most requests it
was answering at once (a client's concurrency, as the calendar sees it; a request
the client gave up on counts until its ``delay`` ends).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass, field

from aiohttp import web
from opentimestamps.core.notary import BitcoinBlockHeaderAttestation, PendingAttestation
from opentimestamps.core.op import OpAppend, OpPrepend, OpSHA256
from opentimestamps.core.serialize import BytesSerializationContext
from opentimestamps.core.timestamp import Timestamp

# The shape of a real calendar's answer: the finney.calendar.eternitywall.com branch of an `ots info`
# listing of a real proof, confirmed in Bitcoin block 808746 (transaction 95f612d2...473f0c, Merkle root
# 2e81f9bf...9a399b): 1 aggregation level, 15 levels of commitments, an 89-byte transaction prefix, 12 levels
# of block Merkle tree; 1,140 bytes from the submitted digest to the attestation. The same proof's bob branch
# (block 808752) has no aggregation level: 1,105 bytes.
MAINNET_LIKE = {"aggregated": 1, "other_commitments": 2**14, "block_txs": 3000}
MAINNET_LIKE_BYTES = 1140  # what MAINNET_LIKE gives from the digest a calendar receives to its attestation
REGTEST_BITS = 0x207FFFFF
REGTEST_TARGET = 0x7FFFFF << (8 * (0x20 - 3))
PENDING_TEXT = "Pending confirmation in Bitcoin blockchain"
RPC_USER, RPC_PASSWORD = "user", "pass"


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def mine_header(prev_hash: bytes, merkle_root: bytes, time: int, bits: int = REGTEST_BITS) -> bytes:
    """An 80-byte header whose hash meets ``bits`` (regtest bits need about two tries)."""
    target = (bits & 0x7FFFFF) << (8 * ((bits >> 24) - 3))
    start = b"".join((
        (0x20000000).to_bytes(4, "little"), prev_hash, merkle_root, time.to_bytes(4, "little"),
        bits.to_bytes(4, "little"),
    ))
    for nonce in range(1 << 32):
        header = start + nonce.to_bytes(4, "little")
        if int.from_bytes(sha256d(header), "little") <= target:
            return header
    raise RuntimeError("no nonce found")


def weaken(header: bytes) -> bytes:
    """The same header with a nonce whose hash misses its own target (insufficient proof of work)."""
    bits = int.from_bytes(header[72:76], "little")
    target = (bits & 0x7FFFFF) << (8 * ((bits >> 24) - 3))
    for nonce in range(1 << 32):
        weak = header[:76] + nonce.to_bytes(4, "little")
        if int.from_bytes(sha256d(weak), "little") > target:
            return weak
    raise RuntimeError("unreachable")


@dataclass
class FakeChain:
    """A chain of regtest-PoW headers; height 0 is a genesis with an empty Merkle root."""

    start_time: int = 1_700_000_000
    headers: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.headers:
            self.headers.append(mine_header(bytes(32), bytes(32), self.start_time))

    @property
    def height(self) -> int:
        return len(self.headers) - 1

    def mine(self, merkle_root: bytes) -> int:
        """Append a block with ``merkle_root`` (internal byte order); returns its height."""
        prev = sha256d(self.headers[-1])
        self.headers.append(mine_header(prev, merkle_root, self.start_time + 600 * len(self.headers)))
        return self.height

    def block_hash(self, height: int) -> str:
        return sha256d(self.headers[height])[::-1].hex()

    def height_of(self, block_hash: str) -> int | None:
        for height in range(len(self.headers)):
            if self.block_hash(height) == block_hash:
                return height
        return None


def _serialize(timestamp: Timestamp) -> bytes:
    ctx = BytesSerializationContext()
    timestamp.serialize(ctx)
    return ctx.getbytes()


def _merkle_tree(stamps: list[Timestamp], others: list[bytes]) -> Timestamp:
    """``make_merkle_tree(stamps + others)`` with ``others`` as bare digests: only ``stamps`` get operations."""
    level: list[tuple[Timestamp | None, bytes]] = [(s, s.msg) for s in stamps] + [(None, d) for d in others]
    while len(level) > 1:
        pairs = []
        for (left, lmsg), (right, rmsg) in zip(level[0::2], level[1::2], strict=False):
            tip = None
            if right is not None:  # shared with the left node, as the library's cat_sha256 does
                prepended = right.ops.add(OpPrepend(lmsg))
                tip = prepended.ops.add(OpSHA256())
                if left is not None:
                    left.ops[OpAppend(rmsg)] = prepended
            elif left is not None:
                tip = left.ops.add(OpAppend(rmsg)).ops.add(OpSHA256())
            pairs.append((tip, hashlib.sha256(lmsg + rmsg).digest()))
        if len(level) % 2:
            pairs.append(level[-1])  # an odd last node moves up unchanged
        level = pairs
    tip = level[0][0]
    assert tip is not None, "at least one stamp"
    return tip


def _transaction_around_op_return(lock_time: int) -> tuple[bytes, bytes]:
    """A calendar transaction's bytes before and after its OP_RETURN payload (stamper.py's template):
    version 1, one input with an empty scriptSig and sequence 0xfffffffd, a P2WPKH change output, then the
    OP_RETURN output pushing 32 bytes; the lock time after. Without witness: the txid covers none."""
    prefix = b"".join((
        (1).to_bytes(4, "little"), b"\x01", os.urandom(36), b"\x00", (0xFFFFFFFD).to_bytes(4, "little"),
        b"\x02", os.urandom(8), b"\x16\x00\x14", os.urandom(20),
        bytes(8), b"\x22\x6a\x20",
    ))
    return prefix, lock_time.to_bytes(4, "little")


def _bitcoin_merkle_path(tip: Timestamp, txids: list[bytes], index: int) -> Timestamp:
    """Graft onto ``tip`` (whose msg is txids[index]) the ops up to the block's Merkle root."""
    level = list(txids)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])  # Bitcoin duplicates an odd last txid
        sibling = level[index ^ 1]
        op = OpAppend(sibling) if index % 2 == 0 else OpPrepend(sibling)
        tip = tip.ops.add(op).ops.add(OpSHA256()).ops.add(OpSHA256())
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
        index //= 2
    return tip


class _Server:
    """An aiohttp app on 127.0.0.1, port 0; ``url`` once started."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.app = web.Application()
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.requests: list[tuple[str, str]] = []

    async def start(self) -> _Server:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @web.middleware
    async def _record(self, request: web.Request, handler):
        self.requests.append((request.method, request.path))
        return await handler(request)


class FakeCalendar(_Server):
    """An OpenTimestamps calendar (see the module docstring)."""

    def __init__(
        self, chain: FakeChain, *, host: str = "127.0.0.1", block_txs: int = 3, aggregated: int = 0,
        other_commitments: int = 0,
    ) -> None:
        super().__init__()
        if block_txs < 2:
            raise ValueError("a block holds the coinbase and the calendar's transaction at least")
        self.host = host
        self.chain = chain
        self.block_txs = block_txs  # transactions per mined block: the proof's block path length
        self.aggregated = aggregated  # other clients' digests received in the same second as each one
        self.other_commitments = other_commitments  # other commitments in each transaction's tree
        self.down = False
        self.oversize = False
        self.garbage = False
        self.delay = 0.0
        self.attestation_uri: str | None = None
        self.in_flight = 0
        self.peak_in_flight = 0
        self.pending: dict[bytes, None] = {}  # commitments awaiting a block, in order
        self.confirmed: dict[bytes, bytes] = {}  # commitment -> serialized upgrade
        self.app.middlewares.append(self._record)
        self.app.middlewares.append(self._count)
        self.app.router.add_post("/digest", self._digest)
        self.app.router.add_get("/timestamp/{hex}", self._timestamp)

    @property
    def digests_received(self) -> int:
        return sum(1 for method, path in self.requests if method == "POST" and path == "/digest")

    @web.middleware
    async def _count(self, request: web.Request, handler):
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def _digest(self, request: web.Request) -> web.Response:
        digest = await request.content.read(65)  # before the delay: a client that gave up has sent it already
        await asyncio.sleep(self.delay)
        if self.garbage:
            return web.Response(body=b"\xff\x00<html>not a timestamp" + bytes(40), content_type="text/html")
        if self.down:
            return web.Response(status=503, text="calendar unavailable")
        if not 1 <= len(digest) <= 64:
            return web.Response(status=400, text="digest too long")
        stamp = Timestamp(digest)
        tip = stamp.ops.add(OpAppend(os.urandom(16))).ops.add(OpSHA256())
        tip = _merkle_tree([tip], [os.urandom(32) for _ in range(self.aggregated)])
        second = int(time.time()).to_bytes(4, "big")
        commitment_stamp = tip.ops.add(OpPrepend(second)).ops.add(OpAppend(os.urandom(8)))
        commitment_stamp.attestations.add(PendingAttestation(self.attestation_uri or self.url))
        self.pending[commitment_stamp.msg] = None
        return self._ots_reply(_serialize(stamp))

    async def _timestamp(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        if self.garbage:
            return web.Response(body=b"\x00\x01garbage" * 5, content_type="application/vnd.opentimestamps.v1")
        if self.down:
            return web.Response(status=503, text="calendar unavailable")
        try:
            commitment = bytes.fromhex(request.match_info["hex"])
        except ValueError:
            return web.Response(status=400, text="commitment must be hex")
        if commitment in self.confirmed:
            return self._ots_reply(self.confirmed[commitment])
        if commitment in self.pending:
            return web.Response(status=404, text=PENDING_TEXT)
        return web.Response(status=404, text="Not found")

    def _ots_reply(self, body: bytes) -> web.Response:
        if self.oversize:
            body += bytes(10_001)
        return web.Response(body=body, content_type="application/vnd.opentimestamps.v1")

    def forge(self, height: int) -> None:
        """Answer every pending commitment with a Bitcoin attestation at ``height`` that its block does not
        commit to: well formed, as short as a real one's first steps, and false."""
        if not self.pending:
            raise RuntimeError("nothing pending at this calendar")
        for commitment in self.pending:
            stamp = Timestamp(commitment)
            tip = stamp.ops.add(OpSHA256()).ops.add(OpAppend(os.urandom(32))).ops.add(OpSHA256()).ops.add(OpSHA256())
            tip.attestations.add(BitcoinBlockHeaderAttestation(height))
            self.confirmed[commitment] = _serialize(stamp)
        self.pending.clear()

    def confirm(self) -> int:
        """Mine a block committing every pending commitment, as the calendar's transaction; returns its height."""
        if not self.pending:
            raise RuntimeError("nothing pending at this calendar")
        stamps = [Timestamp(c) for c in self.pending]
        others = [os.urandom(32) for _ in range(self.other_commitments)]  # digests of other clients' commitments
        tip = _merkle_tree([stamp.ops.add(OpSHA256()) for stamp in stamps], others)
        prefix, suffix = _transaction_around_op_return(self.chain.height)
        txid_stamp = tip.ops.add(OpPrepend(prefix)).ops.add(OpAppend(suffix)).ops.add(OpSHA256()).ops.add(OpSHA256())
        txids = [os.urandom(32), txid_stamp.msg] + [os.urandom(32) for _ in range(self.block_txs - 2)]  # 0: coinbase
        root_stamp = _bitcoin_merkle_path(txid_stamp, txids, 1)
        height = self.chain.mine(root_stamp.msg)
        root_stamp.attestations.add(BitcoinBlockHeaderAttestation(height))
        for stamp in stamps:
            self.confirmed[stamp.msg] = _serialize(stamp)
        self.pending.clear()
        return height


class EsploraFake(_Server):
    """The three Esplora endpoints verifiers use: /block-height/<h>, /block/<hash>/header, /block/<hash>."""

    def __init__(self, chain: FakeChain) -> None:
        super().__init__()
        self.chain = chain
        self.app.middlewares.append(self._record)
        self.app.router.add_get("/block-height/{height}", self._block_height)
        self.app.router.add_get("/block/{hash}/header", self._header)
        self.app.router.add_get("/block/{hash}", self._block)

    async def _block_height(self, request: web.Request) -> web.Response:
        height = int(request.match_info["height"])
        if height > self.chain.height:
            return web.Response(status=404, text="Block not found")
        return web.Response(text=self.chain.block_hash(height))

    def _height(self, request: web.Request) -> int:
        height = self.chain.height_of(request.match_info["hash"])
        if height is None:
            raise web.HTTPNotFound(text="Block not found")
        return height

    async def _header(self, request: web.Request) -> web.Response:
        return web.Response(text=self.chain.headers[self._height(request)].hex())

    async def _block(self, request: web.Request) -> web.Response:
        height = self._height(request)
        raw = self.chain.headers[height]
        return web.json_response({
            "id": self.chain.block_hash(height),
            "height": height,
            "version": int.from_bytes(raw[0:4], "little"),
            "previousblockhash": raw[4:36][::-1].hex(),
            "merkle_root": raw[36:68][::-1].hex(),
            "timestamp": int.from_bytes(raw[68:72], "little"),
            "bits": int.from_bytes(raw[72:76], "little"),
            "nonce": int.from_bytes(raw[76:80], "little"),
            "tx_count": 1,
        })


class BitcoindFake(_Server):
    """bitcoind's JSON-RPC as ``ots verify --bitcoin-node`` and our verifier use it (basic auth user:pass).

    Methods: getblockcount, getblockhash, getblockheader (verbose or not), getblock.
    """

    def __init__(self, chain: FakeChain) -> None:
        super().__init__()
        self.chain = chain
        self.app.middlewares.append(self._record)
        self.app.router.add_post("/", self._rpc)

    @property
    def url(self) -> str:
        return f"http://{RPC_USER}:{RPC_PASSWORD}@{self.host}:{self.port}"

    async def _rpc(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != _basic(RPC_USER, RPC_PASSWORD):
            return web.Response(status=401)
        call = json.loads(await request.read())
        try:
            result = self._dispatch(call["method"], call.get("params", []))
            reply = {"result": result, "error": None, "id": call.get("id")}
        except LookupError as exc:
            reply = {"result": None, "error": {"code": exc.args[0], "message": exc.args[1]}, "id": call.get("id")}
        return web.json_response(reply)

    def _dispatch(self, method: str, params: list):
        chain = self.chain
        if method == "getblockcount":
            return chain.height
        if method == "getblockhash":
            if not 0 <= params[0] <= chain.height:
                raise LookupError(-8, "Block height out of range")
            return chain.block_hash(params[0])
        if method in ("getblockheader", "getblock"):
            height = chain.height_of(params[0])
            if height is None:
                raise LookupError(-5, "Block not found")
            verbose = params[1] if len(params) > 1 else True
            if method == "getblockheader" and not verbose:
                return chain.headers[height].hex()
            raw = chain.headers[height]
            return {
                "hash": chain.block_hash(height), "height": height, "confirmations": chain.height - height + 1,
                "merkleroot": raw[36:68][::-1].hex(), "time": int.from_bytes(raw[68:72], "little"),
                "mediantime": int.from_bytes(raw[68:72], "little"), "chainwork": "00" * 32,
                "bits": raw[72:76][::-1].hex(), "nonce": int.from_bytes(raw[76:80], "little"),
            }
        raise LookupError(-32601, "Method not found")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

