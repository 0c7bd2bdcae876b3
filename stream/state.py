"""Durable per-user state: each user's rolling sequence, stored per context, in RocksDB.

The record layout (keys, the user meta record) is :mod:`longretriever.stream.records`.

A user's events of context ``c`` live in segments ``first..last`` of ``c``; the first ``skip``
events of the first segment are evicted (the cap keeps the newest ``max_len`` events of the
user). Every read a query makes is bounded by what the query asks for, not by the history:
"the newest K events of context c" reads the last ceil(K/256)+1 segments of ``c``, the recent
window reads the tail segments of each context, and "which of these k candidates has the user
seen?" reads at most k seen-item buckets. Every batch of changes is written with the
partitions' next offsets in one atomic RocksDB write batch, so state and consumed position can
never disagree. The writes themselves are in :mod:`longretriever.stream.writer`.

The item -> context table is part of the state: its fingerprint is recorded on the first
write, and opening the state for writing with a different (or no) table is refused unless the
caller asks to re-derive every user's context index from the stored events
(``reindex_contexts=True``, which also removes an (item, ts) stored under two contexts).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import msgpack
import numpy as np
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from longretriever.core.contexts import ContextTable
from longretriever.core.errors import ConfigError, ServiceUnavailable
from longretriever.core.sequence import UserSequence, canonical_order
from longretriever.stream.seen import bucket_of, buckets_ids, decode_bucket
from longretriever.stream.records import _P, _U, INFO_KEY, UserMeta, hkeys, lkey, mkey, okey, skey
from longretriever.stream.segments import decode_segment, segments_behind

log = logging.getLogger(__name__)

STATE_VERSION = 2
WRITTEN_BYTES = 64 * 1_048_576  # bound of the records the writer remembers (StateStore._written)


@dataclass(slots=True)
class ApplyResult:
    appended: int = 0
    duplicates: int = 0
    evicted: int = 0
    late: list[int] = field(default_factory=list)  # input indices rejected as too late
    touched: dict[int, set[int]] = field(default_factory=dict)



class StateStore:
    """RocksDB-backed state. Single writer (the stream worker); readers may share the object."""

    def __init__(self, path: Path | str, contexts: ContextTable | None = None, *,
                 max_len: int = 100_000, segment_events: int = 256,
                 late_tolerance_ms: int = 7 * 24 * 3600 * 1000, read_only: bool = False,
                 sync: bool = False, reindex_contexts: bool = False) -> None:
        self.path = Path(path)
        self.contexts = contexts or ContextTable.single()
        self.max_len = max_len
        self.seg = segment_events
        self.late_tolerance_ms = late_tolerance_ms
        opts = Options(raw_mode=True)
        opts.create_if_missing(not read_only)
        try:
            if read_only:
                self.db = Rdict(str(self.path), options=opts, access_type=_read_only())
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self.db = Rdict(str(self.path), options=opts)
        except Exception as exc:  # rocksdict raises plain Exceptions for I/O and lock errors
            raise ServiceUnavailable(f"cannot open state at {self.path}: {exc}") from exc
        self._wopts = WriteOptions()
        self._wopts.sync = sync
        self._pending: dict[bytes, bytes | None] = {}
        # a staged batch handed off to an asynchronous commit (the changelog pipeline): the next
        # batch is staged on top of it, reading through it, until it is in RocksDB
        self._inflight: dict[bytes, bytes | None] | None = None
        # records this writer committed lately (None: deleted), read before RocksDB by the write
        # path: a live stream rewrites the same users' tails, metas and seen buckets batch after
        # batch, and a point get costs more than the rest of a one-event write. Only committed
        # bytes enter it; a write that bypasses the writer (restore, reindex) empties it.
        self._written: dict[bytes, bytes | None] = {}
        self._written_bytes = 0
        self._tls = threading.local()
        self._closed = False
        from longretriever.stream.writer import BatchWriter  # the write path (same layer)

        self._writer = BatchWriter(self)
        if not read_only:
            try:
                self._check_contexts(reindex_contexts)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Close the database (idempotent)."""
        if not self._closed:
            self._closed = True
            self.db.close()

    # ---- the context table is part of the state ------------------------------------------
    def info(self) -> dict | None:
        """The state's record (context fingerprint, names, version), None if never written."""
        v = self.db.get(INFO_KEY)
        return None if v is None else msgpack.unpackb(v)

    def _info_value(self) -> bytes:
        return msgpack.packb({"version": STATE_VERSION, "contexts": self.contexts.digest(),
                              "names": list(self.contexts.names)})

    def _check_contexts(self, reindex: bool) -> None:
        rec = self.info()
        want = self.contexts.digest()
        if rec is not None and rec.get("contexts") == want and rec.get("version") == STATE_VERSION:
            return
        empty = next(iter(self.users()), None) is None
        if rec is None and empty:
            self.db.put(INFO_KEY, self._info_value(), self._wopts)
            return
        if not reindex:
            raise ConfigError(self._mismatch(rec))
        log.warning("reindexing contexts of the state at %s (%s)", self.path, self._mismatch(rec))
        users = self._writer.reindex()
        log.warning("reindexed %d users under context table %s", users, want)

    def _mismatch(self, rec: dict | None) -> str:
        given = (f"table {self.contexts.digest()} ({self.contexts.num_contexts} contexts)"
                 if self.contexts.item_ids.size else "no item -> context table (--items)")
        if rec is None:
            built = "without a recorded item -> context table (an older state)"
        else:
            n = len(rec.get("names", ()))
            built = (f"with item -> context table {rec.get('contexts')} ({n} contexts)" if n > 1
                     else "with no item -> context table")
        return (f"state at {self.path} was built {built}, but this run has {given}; use the same "
                f"items file, or --reindex-contexts to re-derive every user's contexts from the stored events")

    # ---- offsets -------------------------------------------------------------------------
    def next_offset(self, partition: int) -> int | None:
        v = self._get(okey(partition))
        return None if v is None else int(_U.unpack(v)[0])

    def watermark(self) -> dict[int, int]:
        """partition -> next offset (one ordered scan of the few ``o`` keys)."""
        out = {}
        src = getattr(self._tls, "view", None) or self.db
        for k, v in src.items(from_key=b"o"):
            if not k.startswith(b"o"):
                break
            out[_P.unpack(k[1:5])[0]] = int(_U.unpack(v)[0])
        return out

    def changelog_offset(self, partition: int) -> int | None:
        """The changelog offset this state reflects for ``partition`` (None: never restored or
        published)."""
        v = self.db.get(lkey(partition))
        return None if v is None else int(_U.unpack(v)[0])

    def _keys(self, prefix: bytes) -> Iterator[bytes]:
        for k in self.db.keys(from_key=prefix):
            if not k.startswith(prefix):
                break
            yield k

    # ---- reads ---------------------------------------------------------------------------
    def _load_meta(self, user: int) -> UserMeta | None:
        memo = getattr(self._tls, "metas", None)  # inside reading(): a user's meta cannot change
        if memo is not None and user in memo:
            return memo[user]
        v = self._get(mkey(user))
        m = None if v is None else UserMeta.unpack(v)
        if memo is not None:
            memo[user] = m
        return m

    def _wmeta(self, user: int) -> UserMeta | None:
        """The writer's read of a meta record (see :meth:`_wget`)."""
        v = self._wget(mkey(user))
        return None if v is None else UserMeta.unpack(v)

    def _meta(self, user: int) -> dict[int, list[int]] | None:
        m = self._load_meta(user)
        return None if m is None else m.ctxs

    @contextmanager
    def reading(self):
        """Point-in-time reads (nestable): the public read methods use a RocksDB snapshot, so a reader
        thread (gRPC, refresh) never sees a half-applied or staged-but-uncommitted batch."""
        if getattr(self._tls, "view", None) is not None:
            yield
            return
        self._tls.view = self.db.snapshot()
        self._tls.metas = {}
        self._tls.segs = {}  # decoded segments of this snapshot: recent() and context_tail() share tails
        self._tls.seen = {}  # user -> _SeenSoFar: the seen-item buckets read in this snapshot
        try:
            yield
        finally:
            self._tls.view = self._tls.metas = self._tls.segs = self._tls.seen = None

    def _get(self, key: bytes) -> bytes | None:
        view = getattr(self._tls, "view", None)
        if view is not None:
            try:
                return view[key]
            except Exception as exc:  # rocksdict's Snapshot raises a bare Exception when missing
                if "not found" in str(exc):
                    return None
                raise
        return self._wget(key)

    def _wget(self, key: bytes) -> bytes | None:
        """The writer's read (never inside :meth:`reading`): its staged batch, the batch in
        flight, what it committed lately, then RocksDB."""
        if key in self._pending:  # the writer reading through its own staged batch
            return self._pending[key]
        inflight = self._inflight
        if inflight is not None and key in inflight:  # ... and the one being committed
            return inflight[key]
        written = self._written
        if key in written:
            return written[key]
        return self.db.get(key)

    def _segment(self, user: int, ctx: int, seg: int, skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
        memo = getattr(self._tls, "segs", None)  # inside reading(): a segment cannot change
        key = skey(user, ctx, seg)
        got = memo.get(key) if memo is not None else None
        if got is None:
            got = decode_segment(self._get(key))
            if memo is not None:  # shared by every read of this snapshot: read-only views
                got[0].flags.writeable = got[1].flags.writeable = False
                memo[key] = got
        return got[0][skip:], got[1][skip:]

    def context_tail(self, user: int, ctx: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Newest ``k`` events of ``ctx`` for ``user``, oldest first (the hard search)."""
        with self.reading():
            meta = self._meta(user)
            empty = np.zeros(0, np.int64)
            if not meta or ctx not in meta or k <= 0:
                return empty, empty
            first, last, skip, _ = meta[ctx]
            i, t = self._segment(user, ctx, last, skip if last == first else 0)
            if i.size >= k or last == first:  # the tail segment holds them (usual for a hard search)
                return i[-k:], t[-k:]
            parts_i, parts_t, have = [i], [t], i.size
            for seg in range(last - 1, first - 1, -1):
                i, t = self._segment(user, ctx, seg, skip if seg == first else 0)
                parts_i.append(i)
                parts_t.append(t)
                have += i.size
                if have >= k:
                    break
            items = np.concatenate(parts_i[::-1])[-k:]
            ts = np.concatenate(parts_t[::-1])[-k:]
            return items, ts

    def context_items(self, user: int, ctx: int) -> np.ndarray:
        with self.reading():
            meta = self._meta(user) or {}
            return self.context_tail(user, ctx, meta[ctx][3])[0] if ctx in meta else np.zeros(0, np.int64)

    def seen_mask(self, user: int, items: np.ndarray) -> np.ndarray:
        """For each raw id in ``items``: is it in the user's stored sequence (any context)? Reads
        the meta and at most one seen-item bucket per distinct id; inside :meth:`reading` a bucket
        is read once and the ids read so far are kept as one sorted array (one search per check)."""
        items = np.asarray(items, np.int64)
        out = np.zeros(items.shape, bool)
        with self.reading():
            m = self._load_meta(user)
            if m is None or items.size == 0:
                return out
            if m.buckets is None:  # written before the seen-item index: reindex rebuilds it
                return np.isin(items, self.sequence(user).items)
            # an id can only be in its own bucket: membership in the union of the buckets read
            # is membership in the sequence
            known = self._tls.seen.setdefault(user, _SeenSoFar())
            new = [b for b in np.unique(bucket_of(items, m.buckets)).tolist() if b not in known.buckets]
            if new:
                fresh = buckets_ids([v for key in hkeys(user, new) if (v := self._get(key)) is not None])
                known.ids = np.sort(np.concatenate([known.ids, fresh]) if known.ids.size else fresh)
                known.buckets.update(new)
            ids = known.ids
            if ids.size == 0:
                return out
            return ids[np.minimum(np.searchsorted(ids, items), ids.size - 1)] == items

    def seen_items(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """(distinct items, occurrence counts) from the seen-item buckets (tests, reindex)."""
        with self.reading():
            m = self._load_meta(user)
            parts = [decode_bucket(v) for key in hkeys(user, range(m.buckets or 0)) if (v := self._get(key))] if m else []
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        items, counts = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        order = np.argsort(items)
        return items[order], counts[order]

    def context_counts(self, user: int) -> dict[int, int]:
        with self.reading():
            return {c: m[3] for c, m in (self._meta(user) or {}).items()}

    def sequence(self, user: int, ctx: int | None = None) -> UserSequence | None:
        """The user's whole stored sequence (optionally one context), canonical order."""
        with self.reading():
            meta = self._meta(user)
            if meta is None:
                return None
            ctxs = [ctx] if ctx is not None else sorted(meta)
            items, ts, cs = [], [], []
            for c in ctxs:
                if c not in meta:
                    continue
                i, t = self.context_tail(user, c, meta[c][3])
                items.append(i)
                ts.append(t)
                cs.append(np.full(i.size, c, np.int32))
            return _merged(items, ts, cs)

    def recent(self, user: int, n: int = 1000) -> UserSequence | None:
        """Newest ``n`` events across all contexts, oldest first; reads only tail segments: a
        context is read backwards while its oldest loaded event is not older than the n-th
        newest loaded so far, as many segments per round as its event rate says
        (:func:`segments_behind`); O(n + contexts x segment)."""
        with self.reading():
            meta = self._meta(user)
            if meta is None:
                return None
            if n <= 0:
                return _merged([], [], [])
            loaded: dict[int, list] = {}  # ctx -> [items parts, ts parts, lowest segment read, events]
            for c, (first, last, skip, _) in meta.items():
                i, t = self._segment(user, c, last, skip if last == first else 0)
                loaded[c] = [[i], [t], last, i.size]
            while True:
                all_ts = np.concatenate([p for v in loaded.values() for p in v[1]])
                cut = int(np.partition(all_ts, all_ts.size - n)[all_ts.size - n]) if all_ts.size > n else None
                grew = False
                for c, v in loaded.items():
                    first, _, skip, _ = meta[c]
                    oldest = int(v[1][0][0]) if v[1][0].size else None  # of what is loaded
                    if v[2] == first or (cut is not None and oldest is not None and oldest < cut):
                        continue  # everything older in this context is older than the cut
                    back = segments_behind(oldest, int(v[1][-1][-1]) if oldest is not None else 0, v[3], cut, n, self.seg)
                    for _ in range(min(v[2] - first, back)):
                        i, t = self._segment(user, c, v[2] - 1, skip if v[2] - 1 == first else 0)
                        v[0].insert(0, i)
                        v[1].insert(0, t)
                        v[2] -= 1
                        v[3] += i.size
                    grew = True
                if not grew:
                    break
            items, ts, cs = [], [], []
            for c, v in loaded.items():
                i, t = np.concatenate(v[0]), np.concatenate(v[1])
                if cut is not None:  # only events at or after the cut can be among the newest n
                    lo = int(np.searchsorted(t, cut, "left"))
                    i, t = i[lo:], t[lo:]
                items.append(i)
                ts.append(t)
                cs.append(c)
            merged = _merged(items, ts, [np.repeat(np.asarray(cs, np.int32), [i.size for i in items])])
            return UserSequence(merged.items[-n:], merged.ts[-n:], merged.contexts[-n:])

    def users(self) -> Iterator[int]:
        it = self.db.keys(from_key=b"u")
        for k in it:
            if not k.startswith(b"u"):
                break
            if k[9:10] == b"m":
                yield _U.unpack(k[1:9])[0]

    def digest(self) -> str:
        """sha256 over every user's logical sequence (user order); independent of batching."""
        h = hashlib.sha256()
        for u in self.users():
            s = self.sequence(u)
            h.update(_U.pack(u))
            h.update(s.items.tobytes())
            h.update(s.ts.tobytes())
            h.update(s.contexts.astype(np.int32).tobytes())
        return h.hexdigest()

    def storage_bytes(self) -> tuple[int, int]:
        """(bytes of all user keys and values -- segments, meta, seen-item buckets --, stored
        events) for the bytes-per-event figure."""
        total = events = 0
        for k, v in self.db.items(from_key=b"u"):
            if not k.startswith(b"u"):
                break
            total += len(k) + len(v)
            if k[9:10] == b"m":
                events += UserMeta.unpack(v).total
        return total, events

    # ---- writes (stream.writer) ----------------------------------------------------------
    def apply(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray,
              offsets: dict[int, int]) -> ApplyResult:
        """Apply a batch of valid events and advance ``offsets`` in one atomic write."""
        wb, res = self.prepare(users, items, ts, offsets)
        self.commit(wb)
        return res

    def prepare(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray, offsets: dict[int, int],
                partition_of: dict[int, int] | None = None) -> tuple[WriteBatch, ApplyResult]:
        """Stage a batch of valid events plus ``offsets`` (partition -> next offset) without
        writing; see :meth:`longretriever.stream.writer.BatchWriter.prepare`. ``partition_of``
        (user -> source partition) indexes new users by partition. Call :meth:`commit` next;
        :attr:`staged` holds the changed user records until then."""
        return self._writer.prepare(users, items, ts, offsets, partition_of)

    @property
    def staged(self) -> dict[bytes, bytes | None]:
        """Every record the staged batch changes (None: deleted), for the changelog."""
        return self._pending

    def set_changelog_offsets(self, wb: WriteBatch, ends: dict[int, int]) -> None:
        for p, off in ends.items():
            wb.put(lkey(p), _U.pack(off))

    def commit(self, wb: WriteBatch) -> None:
        """Atomically write a staged batch (state and offsets together)."""
        try:
            self.db.write(wb, self._wopts)
            self._remember(self._pending)
        finally:
            self._pending = {}

    def _remember(self, records: dict[bytes, bytes | None]) -> None:
        """Keep committed records for the write path (bounded: emptied past WRITTEN_BYTES)."""
        self._written_bytes += sum(len(v) for v in records.values() if v is not None) + 32 * len(records)
        if self._written_bytes > WRITTEN_BYTES:
            self._written, self._written_bytes = {}, 0
        self._written.update(records)

    def write_around(self, wb: WriteBatch) -> None:
        """Write a batch that did not come through the writer (restore, seen-index rebuild,
        partition drop): the records the writer remembers are dropped with it."""
        self.db.write(wb, self._wopts)
        self.forget_written()

    def forget_written(self) -> None:
        """RocksDB was written around the writer: drop what it remembers."""
        self._written, self._written_bytes = {}, 0

    def hand_off(self) -> None:
        """The staged batch will be committed later (:meth:`commit_handed_off`); the next
        :meth:`prepare` stages on top of it. One batch at a time may be handed off."""
        if self._inflight is not None:
            raise AssertionError("a handed-off batch is still uncommitted")
        self._inflight, self._pending = self._pending, {}

    def commit_handed_off(self, wb: WriteBatch) -> None:
        """Write the handed-off batch; readers of the layer then read the same from RocksDB."""
        self.db.write(wb, self._wopts)
        self._remember(self._inflight or {})
        self._inflight = None

    def discard_staged(self) -> None:
        """Forget every staged and handed-off record (a failed commit: the batches are
        consumed again from the offsets in the state)."""
        self._inflight = None
        self._pending.clear()


_NO_ITEMS = np.zeros(0, np.int64)


@dataclass
class _SeenSoFar:
    """One user's seen-item buckets read in a snapshot: their numbers and their ids, sorted."""

    buckets: set[int] = field(default_factory=set)
    ids: np.ndarray = field(default_factory=lambda: _NO_ITEMS)


def _merged(items: list[np.ndarray], ts: list[np.ndarray], cs: list[np.ndarray]) -> UserSequence:
    if not items:
        return UserSequence(_NO_ITEMS, _NO_ITEMS, np.zeros(0, np.int32))
    i, t, c = np.concatenate(items), np.concatenate(ts), np.concatenate(cs)
    order = canonical_order(t, i)
    return UserSequence(i[order], t[order], c[order].astype(np.int32, copy=False))


def _read_only():
    from rocksdict import AccessType

    return AccessType.read_only()
