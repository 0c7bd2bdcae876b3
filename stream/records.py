"""The state's record layout in RocksDB: keys and the user meta record. Pure (no I/O).

Keys (big-endian so iteration is ordered):

- ``P<partition:4><user:8>``     the users of a source partition (to drop or restore one)
- ``R<partition:4><user:8>``     a restored user whose seen-item index is to be rebuilt
  (``stream.recovery``)
- ``c``                          the state's record: item -> context table fingerprint, names
- ``l<partition:4>``             changelog offset the state reflects (``stream.changelog``)
- ``o<partition:4>``             next source offset to consume for that partition
- ``u<user:8>h<bucket:4>``       one bucket of the user's seen items (``stream.seen``)
- ``u<user:8>m``                 user meta (msgpack): ``[newest_ts, {ctx: [first_seg, last_seg,
  skip, count]}, seen_buckets, distinct_items]``
- ``u<user:8>s<ctx:4><seg:4>``   one segment of that context (``longretriever.stream.segments``)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

import msgpack
import msgspec

_U = struct.Struct(">q")
_CS = struct.Struct(">II")
_P = struct.Struct(">I")
INFO_KEY = b"c"


@dataclass(slots=True)
class UserMeta:
    """One user's meta record. ``buckets`` is None for a state written before the seen-item
    index existed (rebuilt by a reindex)."""

    newest: int | None
    ctxs: dict[int, list[int]]  # ctx -> [first_seg, last_seg, skip, count]
    buckets: int | None = 1
    distinct: int = 0

    @property
    def total(self) -> int:
        return sum(m[3] for m in self.ctxs.values())

    def pack(self) -> bytes:
        # msgspec writes the same bytes as msgpack.packb here (a test checks it) in a fifth of
        # the time: the meta is packed once per user and batch, at a stream's shape once per event
        return _META_ENC.encode([self.newest, self.ctxs, self.buckets, self.distinct])

    @classmethod
    def unpack(cls, v: bytes) -> "UserMeta":
        try:
            w = _META_DEC.decode(v)
        except msgspec.ValidationError:  # not the typed shape (e.g. string context keys)
            rec = msgpack.unpackb(v, strict_map_key=False)
            ctxs = {int(c): m for c, m in rec[1].items()}
            return cls(rec[0], ctxs, *rec[2:4]) if len(rec) >= 4 else cls(rec[0], ctxs, None, 0)
        return cls(w.newest, w.ctxs, w.buckets, w.distinct)


class _MetaWire(msgspec.Struct, array_like=True, gc=False):
    """The meta record as msgspec decodes it; a record written before the seen-item index
    (two fields) has no buckets (None) and no distinct count."""

    newest: int | None
    ctxs: dict[int, list[int]]
    buckets: int | None = None
    distinct: int = 0


_META_ENC = msgspec.msgpack.Encoder()
_META_DEC = msgspec.msgpack.Decoder(_MetaWire)


def ukey(user: int) -> bytes:
    return b"u" + _U.pack(user)


def mkey(user: int) -> bytes:
    return ukey(user) + b"m"


def skey(user: int, ctx: int, seg: int) -> bytes:
    return ukey(user) + b"s" + _CS.pack(ctx, seg)


def hkey_prefix(user: int) -> bytes:
    """The user's seen-bucket keys: ``hkey(user, b) == hkey_prefix(user) + BUCKET.pack(b)``."""
    return ukey(user) + b"h"


BUCKET = _P  # the bucket number in a seen-bucket key


def hkey(user: int, bucket: int) -> bytes:
    return hkey_prefix(user) + BUCKET.pack(bucket)


def hkeys(user: int, buckets: Iterable[int]) -> list[bytes]:
    """``hkey(user, b)`` for many buckets of one user (the prefix built once)."""
    prefix, pack = hkey_prefix(user), BUCKET.pack
    return [prefix + pack(b) for b in buckets]


def okey(partition: int) -> bytes:
    return b"o" + _P.pack(partition)


def lkey(partition: int) -> bytes:
    return b"l" + _P.pack(partition)


def pkey(partition: int, user: int) -> bytes:
    return b"P" + _P.pack(partition) + _U.pack(user)


def pack_offset(offset: int) -> bytes:
    return _U.pack(offset)
