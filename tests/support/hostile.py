"""Hostile zip archives, written byte by byte: what zipfile refuses to write (duplicate
names, links) or writes too slowly (a 1 GiB bomb) is what an attacker hands the verifier."""

from __future__ import annotations

import stat
import struct
import zlib
from dataclasses import dataclass

_DOS_DATE = (1 << 5) | 1  # 1980-01-01
_UNIX = 3 << 8 | 20  # "made by" Unix, zip 2.0: the external attributes hold a Unix mode


@dataclass(frozen=True)
class Entry:
    name: str
    data: bytes  # stored as is (method 0), or the raw deflate stream when ``size`` is given
    mode: int = stat.S_IFREG | 0o644
    size: int | None = None  # the expanded size of a deflate ``data``
    crc: int | None = None


def zero_bomb(name: str, mebibytes: int) -> Entry:
    """``mebibytes`` MiB of zeros as about 1/1000 of that in deflate (the format's best ratio)."""
    zeros = bytes(2**20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, no history: repeatable
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    return Entry(name, block * mebibytes + c.flush(zlib.Z_FINISH), size=mebibytes * 2**20, crc=crc)


def write_zip(entries: list[Entry]) -> bytes:
    out, central = bytearray(), bytearray()
    for e in entries:
        name = e.name.encode("utf-8")
        method = 0 if e.size is None else 8
        size = len(e.data) if e.size is None else e.size
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        offset = len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0x800, method, 0, _DOS_DATE, crc, len(e.data), size,
                           len(name), 0) + name + e.data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", _UNIX, 20, 0x800, method, 0, _DOS_DATE, crc,
                               len(e.data), size, len(name), 0, 0, 0, 0, e.mode << 16, offset) + name
    return bytes(out + central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                                             len(central), len(out), 0))
