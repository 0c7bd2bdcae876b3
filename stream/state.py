"""Durable per-user state: each user's rolling sequence, stored per context, in RocksDB.

Keys (big-endian so iteration is ordered):

- ``u<user:8>m``                 user meta (msgpack): ``{ctx: [first_seg, last_seg, skip, count]}``
- ``u<user:8>s<ctx:4><seg:4>``   one segment of that context (``longretriever.stream.segments``)
- ``o<partition:4>``             next source offset to consume for that partition

A user's events of context ``c`` live in segments ``first..last`` of ``c``; the first ``skip``
events of the first segment are evicted (the cap keeps the newest ``max_len`` events of the
user). "The newest K events of context c" is therefore a read of the last one or two
segments, never a scan. Every batch of changes is written with the partitions' next offsets
in one atomic RocksDB write batch, so state and consumed position can never disagree.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import msgpack
import numpy as np
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from longretriever.core.contexts import ContextTable
from longretriever.core.errors import ServiceUnavailable
from longretriever.core.sequence import UserSequence, canonical_order
from longretriever.stream.segments import decode_segment, encode_segment, merge_sorted

_U = struct.Struct(">q")
_CS = struct.Struct(">II")
_P = struct.Struct(">I")


@dataclass(slots=True)
class ApplyResult:
    appended: int = 0
    duplicates: int = 0
    evicted: int = 0
    late: list[int] = field(default_factory=list)  # input indices rejected as too late
    touched: dict[int, set[int]] = field(default_factory=dict)


def _ukey(user: int) -> bytes:
    return b"u" + _U.pack(user)


def _skey(user: int, ctx: int, seg: int) -> bytes:
    return _ukey(user) + b"s" + _CS.pack(ctx, seg)


def _okey(partition: int) -> bytes:
    return b"o" + _P.pack(partition)


class StateStore:
    """RocksDB-backed state. Single writer (the stream worker); readers may share the object."""

    def __init__(self, path: Path | str, contexts: ContextTable | None = None, *,
                 max_len: int = 100_000, segment_events: int = 256,
                 late_tolerance_ms: int = 7 * 24 * 3600 * 1000, read_only: bool = False,
                 sync: bool = False) -> None:
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
        self._tls = threading.local()
        self._closed = False

    def close(self) -> None:
        """Close the database (idempotent)."""
        if not self._closed:
            self._closed = True
            self.db.close()

    # ---- offsets -------------------------------------------------------------------------
    def next_offset(self, partition: int) -> int | None:
        v = self.db.get(_okey(partition))
        return None if v is None else int(_U.unpack(v)[0])

    def watermark(self) -> dict[int, int]:
        out = {}
        src = getattr(self._tls, "view", None) or self.db
        for k, v in src.items(from_key=b"o"):
            if not k.startswith(b"o"):
                break
            out[_P.unpack(k[1:5])[0]] = int(_U.unpack(v)[0])
        return out

    # ---- reads ---------------------------------------------------------------------------
    def _load_meta(self, user: int) -> tuple[int | None, dict[int, list[int]] | None]:
        """(newest event ts, {ctx: [first_seg, last_seg, skip, count]}) or (None, None)."""
        v = self._get(_ukey(user) + b"m")
        if v is None:
            return None, None
        newest, ctxs = msgpack.unpackb(v, strict_map_key=False)
        return newest, {int(c): m for c, m in ctxs.items()}

    def _meta(self, user: int) -> dict[int, list[int]] | None:
        return self._load_meta(user)[1]

    @contextmanager
    def reading(self):
        """Point-in-time reads (nestable): the public read methods use a RocksDB snapshot, so a reader
        thread (gRPC, refresh) never sees a half-applied or staged-but-uncommitted batch."""
        if getattr(self._tls, "view", None) is not None:
            yield
            return
        self._tls.view = self.db.snapshot()
        try:
            yield
        finally:
            self._tls.view = None

    def _get(self, key: bytes) -> bytes | None:
        view = getattr(self._tls, "view", None)
        if view is not None:
            try:
                return view[key]
            except Exception as exc:  # rocksdict's Snapshot raises a bare Exception when missing
                if "not found" in str(exc):
                    return None
                raise
        if key in self._pending:  # the writer reading through its own staged batch
            return self._pending[key]
        return self.db.get(key)

    def _put(self, wb: WriteBatch, key: bytes, value: bytes) -> None:
        self._pending[key] = value
        wb.put(key, value)

    def _delete(self, wb: WriteBatch, key: bytes) -> None:
        self._pending[key] = None
        wb.delete(key)

    def _segment(self, user: int, ctx: int, seg: int, skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
        items, ts = decode_segment(self._get(_skey(user, ctx, seg)))
        return items[skip:], ts[skip:]

    def context_tail(self, user: int, ctx: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Newest ``k`` events of ``ctx`` for ``user``, oldest first (the hard search)."""
        with self.reading():
            meta = self._meta(user)
            empty = np.zeros(0, np.int64)
            if not meta or ctx not in meta or k <= 0:
                return empty, empty
            first, last, skip, _ = meta[ctx]
            parts_i, parts_t, have = [], [], 0
            for seg in range(last, first - 1, -1):
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
        """For each raw id in ``items``: is it in the user's stored sequence (any context)?"""
        with self.reading():
            meta = self._meta(user) or {}
            parts = [self.context_items(user, c) for c in meta]
        seen = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return np.isin(np.asarray(items, np.int64), seen)

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
        """Newest ``n`` events across all contexts, oldest first; reads only tail segments."""
        with self.reading():
            meta = self._meta(user)
            if meta is None:
                return None
            loaded: dict[int, tuple[list, list, int]] = {}
            for c, (first, last, skip, _) in meta.items():
                i, t = self._segment(user, c, last, skip if last == first else 0)
                loaded[c] = ([i], [t], last)
            while True:
                merged = _merged([np.concatenate(v[0]) for v in loaded.values()],
                                 [np.concatenate(v[1]) for v in loaded.values()],
                                 [np.full(sum(x.size for x in v[0]), c, np.int32) for c, v in loaded.items()])
                if len(merged) <= n:
                    cutoff = None
                else:
                    cutoff = (merged.ts[-n], merged.items[-n])
                grew = False
                for c, (parts_i, parts_t, seg) in loaded.items():
                    first, _, skip, _ = meta[c]
                    if seg == first:
                        continue
                    oldest = (parts_t[0][0], parts_i[0][0]) if parts_i[0].size else None
                    if cutoff is None or (oldest is not None and oldest >= cutoff):
                        i, t = self._segment(user, c, seg - 1, skip if seg - 1 == first else 0)
                        parts_i.insert(0, i)
                        parts_t.insert(0, t)
                        loaded[c] = (parts_i, parts_t, seg - 1)
                        grew = True
                if not grew:
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
        """(bytes of all user values, stored events) for the bytes-per-event figure."""
        total = events = 0
        for k, v in self.db.items(from_key=b"u"):
            if not k.startswith(b"u"):
                break
            total += len(k) + len(v)
            if k[9:10] == b"m":
                events += sum(m[3] for m in msgpack.unpackb(v, strict_map_key=False)[1].values())
        return total, events

    # ---- writes --------------------------------------------------------------------------
    def apply(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray,
              offsets: dict[int, int]) -> ApplyResult:
        """Apply a batch of valid events and advance ``offsets`` in one atomic write."""
        wb, res = self.prepare(users, items, ts, offsets)
        self.commit(wb)
        return res

    def prepare(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray,
                offsets: dict[int, int]) -> tuple[WriteBatch, ApplyResult]:
        """Stage a batch of valid events plus ``offsets`` (partition -> next offset) without
        writing. Duplicates of stored events (same user, item_id, ts) are skipped; events older
        than the newest event seen before them minus the late tolerance are listed in
        ``ApplyResult.late`` (to be dead-lettered) and not stored. Call :meth:`commit` next."""
        res = ApplyResult()
        wb = WriteBatch(raw_mode=True)
        self._pending.clear()
        users = np.asarray(users, np.int64)
        try:
            if users.size:
                items = np.asarray(items, np.int64)
                ts = np.asarray(ts, np.int64)
                ctxs = self.contexts.context_of(items)
                order = np.argsort(users, kind="stable")
                bounds = np.flatnonzero(np.diff(users[order])) + 1
                for idx in np.split(order, bounds):
                    self._apply_user(wb, int(users[idx[0]]), idx, items, ts, ctxs, res)
            for p, off in offsets.items():
                wb.put(_okey(p), _U.pack(off))
        except BaseException:
            self._pending.clear()
            raise
        return wb, res

    def commit(self, wb: WriteBatch) -> None:
        """Atomically write a staged batch (state and offsets together)."""
        try:
            self.db.write(wb, self._wopts)
        finally:
            self._pending.clear()

    def _apply_user(self, wb: WriteBatch, user: int, idx: np.ndarray, items: np.ndarray,
                    ts: np.ndarray, ctxs: np.ndarray, res: ApplyResult) -> None:
        newest, meta = self._load_meta(user)
        meta = meta or {}
        u_ts = ts[idx]  # arrival order (the batch is in log order per partition)
        # an event is late if older than the newest event seen before it, minus the tolerance
        start = u_ts[0] if newest is None else newest
        seen_max = np.maximum.accumulate(np.concatenate([[start], u_ts]))[:-1]
        late = u_ts < seen_max - self.late_tolerance_ms
        if late.any():
            res.late.extend(idx[late].tolist())
            idx = idx[~late]
        if idx.size:
            newest = max(int(ts[idx].max()), newest if newest is not None else -1)
        touched = res.touched.setdefault(user, set())
        for c in np.unique(ctxs[idx]).tolist():
            sel = idx[ctxs[idx] == c]
            added, dups = self._merge_context(wb, user, c, meta, items[sel], ts[sel])
            res.appended += added
            res.duplicates += dups
            if added:
                touched.add(c)
        res.evicted += self._evict(wb, user, meta)
        if not touched:
            del res.touched[user]
        if not meta:
            return
        self._put(wb, _ukey(user) + b"m", msgpack.packb([newest, meta]))

    def _merge_context(self, wb: WriteBatch, user: int, c: int, meta: dict[int, list[int]],
                       new_items: np.ndarray, new_ts: np.ndarray) -> tuple[int, int]:
        """Merge new events into context ``c`` and rewrite only the segments that change.

        Fast path (events newer than everything stored): append to the tail segment. Otherwise
        load segments from the tail back to the first one that starts strictly before the
        oldest new event, merge with dedup, and re-split from there."""
        if c not in meta:
            meta[c] = [0, -1, 0, 0]
        first, last, skip, count = meta[c]
        order = canonical_order(new_ts, new_items)
        ni, nt = new_items[order], new_ts[order]
        if ni.size > 1:
            keep = np.empty(ni.size, bool)
            keep[0] = True
            np.not_equal(nt[1:], nt[:-1], out=keep[1:])
            keep[1:] |= ni[1:] != ni[:-1]
            in_dups = int(ni.size - keep.sum())
            ni, nt = ni[keep], nt[keep]
        else:
            in_dups = 0
        start = last + 1
        if count:
            ti, tt = self._segment(user, c, last, skip if last == first else 0)
            if (int(nt[0]), int(ni[0])) > (int(tt[-1]), int(ti[-1])):
                m_items, m_ts, dups, start = np.concatenate([ti, ni]), np.concatenate([tt, nt]), in_dups, last
                added = int(ni.size)
            else:
                m_items, m_ts, dups, start, base = self._merge_slow(user, c, meta[c], ni, nt)
                dups += in_dups
                added = int(m_items.size) - base
        else:
            m_items, m_ts, dups, added = ni, nt, in_dups, int(ni.size)
            first = start = skip = 0
        if added == 0:
            return 0, dups
        for seg in range(start, last + 1):
            self._delete(wb, _skey(user, c, seg))
        if start == first:
            skip = 0
        seg = start
        for lo in range(0, m_items.size, self.seg):
            self._put(wb, _skey(user, c, seg), encode_segment(m_items[lo:lo + self.seg], m_ts[lo:lo + self.seg]))
            seg += 1
        meta[c] = [first, seg - 1, skip, count + added]
        return added, dups

    def _merge_slow(self, user: int, c: int, m: list[int], ni: np.ndarray,
                    nt: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int, int]:
        first, last, skip, _ = m
        min_ts = int(nt[0])
        old_i, old_t, start = [], [], last + 1
        for seg in range(last, first - 1, -1):
            i, t = self._segment(user, c, seg, skip if seg == first else 0)
            old_i.insert(0, i)
            old_t.insert(0, t)
            start = seg
            if t.size and t[0] < min_ts:
                break
        base_i, base_t = np.concatenate(old_i), np.concatenate(old_t)
        m_items, m_ts, dups = merge_sorted(base_i, base_t, ni, nt)
        return m_items, m_ts, dups, start, int(base_i.size)

    def _evict(self, wb: WriteBatch, user: int, meta: dict[int, list[int]]) -> int:
        """Drop the user's oldest events until at most ``max_len`` remain. Eviction only moves
        the per-context head (skip) and deletes fully consumed head segments."""
        total = sum(m[3] for m in meta.values())
        excess = total - self.max_len
        if excess <= 0:
            return 0
        heap, heads = [], {}
        for c, (first, last, skip, count) in meta.items():
            if count:
                heads[c] = self._head(user, c, meta[c])
                heapq.heappush(heap, (int(heads[c][1][0]), int(heads[c][0][0]), c))
        for _ in range(excess):
            _, _, c = heapq.heappop(heap)
            first, last, skip, count = meta[c]
            skip, count = skip + 1, count - 1
            i, t = heads[c]
            i, t = i[1:], t[1:]
            if i.size == 0:
                self._delete(wb, _skey(user, c, first))
                first, skip = first + 1, 0
                if count == 0:
                    del meta[c]
                    continue
                meta[c] = [first, last, skip, count]
                i, t = self._head(user, c, meta[c])
            meta[c] = [first, last, skip, count]
            heads[c] = (i, t)
            heapq.heappush(heap, (int(t[0]), int(i[0]), c))
        return excess

    def _head(self, user: int, c: int, m: list[int]) -> tuple[np.ndarray, np.ndarray]:
        first, _, skip, _ = m
        return self._segment(user, c, first, skip)


def _merged(items: list[np.ndarray], ts: list[np.ndarray], cs: list[np.ndarray]) -> UserSequence:
    if not items:
        z = np.zeros(0, np.int64)
        return UserSequence(z, z, np.zeros(0, np.int32))
    i, t, c = np.concatenate(items), np.concatenate(ts), np.concatenate(cs)
    order = canonical_order(t, i)
    return UserSequence(i[order], t[order], c[order].astype(np.int32))


def _read_only():
    from rocksdict import AccessType

    return AccessType.read_only()
