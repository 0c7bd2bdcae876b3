"""The state side of a changelog restore (``stream.changelog`` reads the topic; this writes what
it read): restored records with the partition's user index, the rebuild of the seen-item index
the changelog does not carry, and dropping a partition for a source replay. Apart from
``stream.state`` (the quix-streams split: state, and its recovery).

Keys it adds to the state's (``stream.state``):

- ``R<partition:4><user:8>``   a user restored from the changelog whose seen-item index is still
  to be rebuilt from its segments. Written in the same RocksDB write as the user's records, and
  removed in the same write as the rebuilt index, so a crash in between loses no mark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rocksdict import WriteBatch

from longretriever.stream.seen import index_of
from longretriever.stream.records import _P, _U, hkey, lkey, mkey, okey, ukey

if TYPE_CHECKING:
    from longretriever.stream.state import StateStore


def _pkey(partition: int, user_key: bytes, kind: bytes) -> bytes:
    return kind + _P.pack(partition) + user_key[1:9]


def partition_users(store: "StateStore", partition: int) -> list[int]:
    return [_U.unpack(k[5:13])[0] for k in store._keys(b"P" + _P.pack(partition))]


def commit_restore(store: "StateStore", wb: WriteBatch, partition: int, written_users: set[bytes],
                   changelog_end: int | None = None) -> None:
    """Write restored changelog records plus the partition's user index (and, at the end of a
    restore, the changelog offset reached), each written user marked for :func:`rebuild_seen`."""
    for u in written_users:
        wb.put(_pkey(partition, u, b"P"), b"")
        wb.put(_pkey(partition, u, b"R"), b"")
    if changelog_end is not None:
        wb.put(lkey(partition), _U.pack(changelog_end))
    store.write_around(wb)


def rebuild_seen(store: "StateStore", partition: int, batch_users: int = 200) -> int:
    """Rebuild the seen-item index of every marked user of ``partition`` from its stored segments
    (the end of a restore; a standby only marks, its takeover's delta restore rebuilds). The
    index is a function of the stored items, so this equals the incrementally written one (the
    tests compare them record for record). Returns the number of users rebuilt."""
    marks = list(store._keys(b"R" + _P.pack(partition)))
    for lo in range(0, len(marks), batch_users):
        wb = WriteBatch(raw_mode=True)
        for mk in marks[lo:lo + batch_users]:
            user = _U.unpack(mk[5:13])[0]
            for k in store._keys(ukey(user) + b"h"):
                wb.delete(k)
            m = store._load_meta(user)
            if m is not None:
                items = np.concatenate([store.context_items(user, c) for c in sorted(m.ctxs)]
                                       or [np.zeros(0, np.int64)])
                m.distinct, m.buckets, buckets = index_of(items)
                for b, buf in buckets:
                    wb.put(hkey(user, b), buf)
                wb.put(mkey(user), m.pack())
            wb.delete(mk)
        store.write_around(wb)
    return len(marks)


def drop_partition(store: "StateStore", partition: int, users: set[bytes] = frozenset()) -> None:
    """Delete every user of ``partition`` (its index plus ``users``, ``u<user>`` prefixes), its
    marks and its offsets: the partition is then rebuilt from scratch."""
    wb = WriteBatch(raw_mode=True)
    for pre in {ukey(u) for u in partition_users(store, partition)} | set(users):
        for k in store._keys(pre):
            wb.delete(k)
    for kind in (b"P", b"R"):
        for k in store._keys(kind + _P.pack(partition)):
            wb.delete(k)
    wb.delete(okey(partition))
    wb.delete(lkey(partition))
    store.write_around(wb)
