"""The write path of :class:`longretriever.stream.state.StateStore`: a batch of valid events
-> the changed segments, meta records and seen-item buckets, staged in one RocksDB write batch.

Per user, in one pass over the user's events of the batch (arrival order = log order):

1. **Late or not** -- an event is *late-candidate* if it is older than the newest event the
   user had before it (stored or earlier in the log) minus ``late_tolerance_ms``.
2. **Duplicates are duplicates, whatever their age.** Events are sorted by (context, ts, item,
   arrival); the first arrival of each (ts, item) represents its copies. A representative not
   newer than its context's tail is looked up among the stored events (binary search over the
   context's segments: a few reads, never a scan). Stored -> every copy is a duplicate. Not
   stored and late-candidate -> every copy is late (dead-lettered by the worker). Otherwise
   the representative is new and its copies are duplicates. The context of an event is a
   function of its item under the state's recorded table (``StateStore`` refuses another
   table), so ``(user, item, ts)`` has exactly one place it can be stored.
3. **Merge** -- events newer than the context's tail are appended to the tail segment; older
   new ones are merged from the segment they fall in, and only the segments from there on are
   rewritten.
4. **Cap** -- the user's oldest events (across contexts) are evicted down to ``max_len``.
5. **Seen items** -- +1 per new event's item, -1 per evicted event's item, in the buckets of
   those items only (``stream.seen``).

Nothing is written for a user whose batch changed nothing (e.g. a re-sent history).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

import numpy as np
from rocksdict import WriteBatch

from longretriever.stream.records import INFO_KEY, UserMeta, hkey, mkey, okey, pack_offset, pkey, skey, ukey
from longretriever.stream.seen import (apply_deltas, bucket_count, bucket_of, decode_bucket, encode_bucket,
                                       item_deltas, layout, split_bucket, split_source)
from longretriever.stream.segments import decode_segment, encode_segment, first_key, merge_sorted, stored_mask
from longretriever.stream.writer_fast import (MAX_EVENTS, NOT_TAKEN, TAKEN, TAKEN_NEW_USER,
                                             try_fast)

if TYPE_CHECKING:
    from longretriever.stream.state import ApplyResult, StateStore


def _canonical(ctx: np.ndarray, ts: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The order by (context, ts, item, arrival). When each context's events already arrive
    in (ts, item) order -- a stream in time order -- a stable sort by context alone is that
    order (under a quarter of the four-key lexsort's time at 3,000 events); otherwise the lexsort."""
    pos = np.argsort(ctx, kind="stable")
    c, t, i = ctx[pos], ts[pos], items[pos]
    dt = t[1:] - t[:-1]
    if not ((c[1:] == c[:-1]) & ((dt < 0) | ((dt == 0) & (i[1:] < i[:-1])))).any():
        return pos
    return np.lexsort((np.arange(ctx.size), items, ts, ctx))


class BatchWriter:
    def __init__(self, store: "StateStore", fast: bool = True) -> None:
        self.st = store
        self.fast = fast  # stream.writer_fast for users with a few events (byte-identical)
        # segment key -> (the tail value the fast path wrote, its last ts, its last item): the
        # next event of that context reads the end without summing the tail's deltas
        self.tail_ends: dict[bytes, tuple[bytes, int, int]] = {}

    # ---- staging -------------------------------------------------------------------------
    def _put(self, wb: WriteBatch, key: bytes, value: bytes) -> None:
        self.st._pending[key] = value
        wb.put(key, value)

    def _delete(self, wb: WriteBatch, key: bytes) -> None:
        self.st._pending[key] = None
        wb.delete(key)

    def prepare(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray, offsets: dict[int, int],
                partition_of: dict[int, int] | None = None) -> tuple[WriteBatch, "ApplyResult"]:
        """Stage a batch of valid events plus ``offsets`` (partition -> next offset) without
        writing (see the module docstring for the rules). ``ApplyResult.late`` lists the input
        indices to dead-letter. Call ``StateStore.commit`` next."""
        from longretriever.stream.state import ApplyResult

        st = self.st
        res = ApplyResult()
        wb = WriteBatch(raw_mode=True)
        st._pending.clear()
        users = np.asarray(users, np.int64)
        try:
            if users.size:
                items = np.asarray(items, np.int64)
                ts = np.asarray(ts, np.int64)
                ctxs = st.contexts.context_of(items).astype(np.int64)
                order = np.argsort(users, kind="stable")
                su = users[order]
                starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]]).tolist() + [su.size]
                # Python lists once for the whole batch, sliced per user (the fast path's input),
                # when some user of the batch is small enough for the fast path
                small = self.fast and min(b - a for a, b in zip(starts, starts[1:])) <= MAX_EVENTS
                cols = [ts[order].tolist(), items[order].tolist(), ctxs[order].tolist()] if small else None
                for user, a, b in zip(su[starts[:-1]].tolist(), starts, starts[1:]):
                    took = NOT_TAKEN
                    if cols is not None and b - a <= MAX_EVENTS:
                        took = try_fast(self, wb, user, cols[0][a:b], cols[1][a:b], cols[2][a:b], res)
                    if took == NOT_TAKEN:
                        took = TAKEN_NEW_USER if self._user(wb, user, order[a:b], items, ts, ctxs, res) else TAKEN
                    if took == TAKEN_NEW_USER and partition_of is not None:
                        wb.put(pkey(partition_of[user], user), b"")  # a new user: index it
            for p, off in offsets.items():
                self._put(wb, okey(p), pack_offset(off))
        except BaseException:
            st._pending.clear()
            raise
        return wb, res

    def _user(self, wb: WriteBatch, user: int, idx: np.ndarray, items: np.ndarray, ts: np.ndarray,
              ctxs: np.ndarray, res: "ApplyResult") -> bool:
        """Stage one user's events; True when the user is new to the state."""
        st = self.st
        old = st._load_meta(user)
        m = old or UserMeta(None, {}, 1, 0)
        u_ts, u_items, u_ctx = ts[idx], items[idx], ctxs[idx]
        start = u_ts[0] if m.newest is None else m.newest
        seen_max = np.maximum.accumulate(np.concatenate([[start], u_ts]))[:-1]
        late = u_ts < seen_max - st.late_tolerance_ms
        # canonical order per context; the first arrival of a (ts, item) represents its copies
        pos = _canonical(u_ctx, u_ts, u_items)
        c_s, t_s, i_s = u_ctx[pos], u_ts[pos], u_items[pos]
        rep = np.ones(pos.size, bool)
        rep[1:] = (t_s[1:] != t_s[:-1]) | (i_s[1:] != i_s[:-1])
        rep_of = np.maximum.accumulate(np.where(rep, np.arange(pos.size), 0))
        stored = np.zeros(pos.size, bool)  # meaningful at representatives
        late_s = late[pos]
        added: list[np.ndarray] = []
        newest = m.newest if m.newest is not None else -1
        touched: set[int] = set()
        bounds = np.flatnonzero(c_s[1:] != c_s[:-1]) + 1
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, pos.size]):
            c = int(c_s[a])
            reps = a + np.flatnonzero(rep[a:b])
            ni, nt = self._context(wb, user, c, m, i_s[reps], t_s[reps], late_s[reps], stored, reps)
            if ni.size:
                added.append(ni)
                newest = max(newest, int(nt[-1]))
                touched.add(c)
        dup = stored[rep_of] | (~rep & ~late_s[rep_of])
        rejected = ~stored[rep_of] & late_s[rep_of]
        res.duplicates += int(dup.sum())
        if rejected.any():
            res.late.extend(idx[pos[rejected]].tolist())
        n_added = sum(x.size for x in added)
        res.appended += n_added
        evicted = self._evict(wb, user, m)
        res.evicted += evicted.size
        if not n_added and not evicted.size:
            return False
        if touched:
            res.touched[user] = touched
        m.newest = newest if n_added else m.newest
        self._seen(wb, user, m, np.concatenate(added) if added else np.zeros(0, np.int64), evicted)
        if m.ctxs:
            self._put(wb, mkey(user), m.pack())
        else:
            self._delete(wb, mkey(user))
        return old is None

    # ---- one context ---------------------------------------------------------------------
    def _context(self, wb: WriteBatch, user: int, c: int, m: "UserMeta", ri: np.ndarray, rt: np.ndarray,
                 rlate: np.ndarray, stored: np.ndarray, reps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Merge the representatives (canonical order, unique keys) of context ``c`` that are
        neither stored nor late; marks stored ones in ``stored[reps]``. Returns the (items, ts)
        added, canonical order."""
        st = self.st
        mc = m.ctxs.get(c)
        is_stored = np.zeros(ri.size, bool)
        tail = None
        if mc is not None and mc[3]:
            first, last, skip, _ = mc
            tail = st._segment(user, c, last, skip if last == first else 0)
            tt, ti = int(tail[1][-1]), int(tail[0][-1])
            older = (rt < tt) | ((rt == tt) & (ri <= ti))
            if older.any():
                is_stored[older] = self._stored(user, c, mc, ri[older], rt[older], tail)
        stored[reps] = is_stored
        new = ~is_stored & ~rlate
        ni, nt = ri[new], rt[new]
        if ni.size:
            self._merge(wb, user, c, m, ni, nt, tail)
        return ni, nt

    def _stored(self, user: int, c: int, mc: list[int], qi: np.ndarray, qt: np.ndarray,
                tail: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Which query events (canonical order, unique) are stored in context ``c``: each is
        looked up in the one segment whose range holds it (binary search on segment starts)."""
        st = self.st
        first, last, skip, _ = mc
        raw: dict[int, bytes] = {}
        live: dict[int, tuple[np.ndarray, np.ndarray]] = {last: tail}

        def start(s: int) -> tuple[int, int]:
            if s not in raw:
                raw[s] = st._get(skey(user, c, s))
            return first_key(raw[s], skip if s == first else 0)

        def load(s: int) -> tuple[np.ndarray, np.ndarray]:
            if s not in live:
                if s not in raw:
                    raw[s] = st._get(skey(user, c, s))
                i, t = decode_segment(raw[s])
                k = skip if s == first else 0
                live[s] = (i[k:], t[k:])
            return live[s]

        out = np.zeros(qi.size, bool)
        j, lo = 0, first
        while j < qi.size:
            key = (int(qt[j]), int(qi[j]))
            if start(lo) > key:  # before the stored range of ``lo``: not stored
                j += 1
                continue
            a, b = lo, last  # the last segment whose first event is <= key
            while a < b:
                mid = (a + b + 1) // 2
                if start(mid) <= key:
                    a = mid
                else:
                    b = mid - 1
            si, stt = load(a)
            end_t, end_i = int(stt[-1]), int(si[-1])
            end = j + int(np.searchsorted(qt[j:], end_t, "right"))
            while end > j and qt[end - 1] == end_t and qi[end - 1] > end_i:
                end -= 1
            if end == j:  # between this segment and the next: not stored
                j += 1
            else:
                out[j:end] = stored_mask(si, stt, qi[j:end], qt[j:end])
                j = end
            lo = a
        return out

    def _merge(self, wb: WriteBatch, user: int, c: int, m: "UserMeta", ni: np.ndarray, nt: np.ndarray,
               tail: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Merge new events (canonical order, none stored) into context ``c`` and rewrite only
        the segments that change. Fast path (all newer than the tail): append to the tail
        segment. Otherwise load segments from the tail back to the first one that starts
        strictly before the oldest new event, merge, and re-split from there."""
        st = self.st
        if c not in m.ctxs:
            m.ctxs[c] = [0, -1, 0, 0]
        first, last, skip, count = m.ctxs[c]
        if tail is None:
            m_items, m_ts, start, first, skip = ni, nt, 0, 0, 0
        elif (int(nt[0]), int(ni[0])) > (int(tail[1][-1]), int(tail[0][-1])):
            m_items, m_ts, start = np.concatenate([tail[0], ni]), np.concatenate([tail[1], nt]), last
        else:
            min_ts = int(nt[0])
            old_i, old_t, start = [], [], last + 1
            for seg in range(last, first - 1, -1):
                i, t = tail if seg == last else st._segment(user, c, seg, skip if seg == first else 0)
                old_i.insert(0, i)
                old_t.insert(0, t)
                start = seg
                if t.size and t[0] < min_ts:
                    break
            m_items, m_ts, _ = merge_sorted(np.concatenate(old_i), np.concatenate(old_t), ni, nt)
        for seg in range(start, last + 1):
            self._delete(wb, skey(user, c, seg))
        if start == first:
            skip = 0
        seg = start
        for lo in range(0, m_items.size, st.seg):
            self._put(wb, skey(user, c, seg), encode_segment(m_items[lo:lo + st.seg], m_ts[lo:lo + st.seg]))
            seg += 1
        m.ctxs[c] = [first, seg - 1, skip, count + int(ni.size)]

    # ---- cap and seen items --------------------------------------------------------------
    def _evict(self, wb: WriteBatch, user: int, m: "UserMeta") -> np.ndarray:
        """Drop the user's oldest events until at most ``max_len`` remain; returns their items.
        Eviction only moves the per-context head (skip) and deletes fully consumed head segments."""
        st = self.st
        meta = m.ctxs
        excess = m.total - st.max_len
        if excess <= 0:
            return np.zeros(0, np.int64)
        heap, heads, gone = [], {}, []
        for c, mc in meta.items():
            if mc[3]:
                heads[c] = st._segment(user, c, mc[0], mc[2])
                heapq.heappush(heap, (int(heads[c][1][0]), int(heads[c][0][0]), c))
        for _ in range(excess):
            _, item, c = heapq.heappop(heap)
            gone.append(item)
            first, last, skip, count = meta[c]
            skip, count = skip + 1, count - 1
            i, t = heads[c]
            i, t = i[1:], t[1:]
            if i.size == 0:
                self._delete(wb, skey(user, c, first))
                first, skip = first + 1, 0
                if count == 0:
                    del meta[c]
                    continue
                i, t = st._segment(user, c, first, 0)
            meta[c] = [first, last, skip, count]
            heads[c] = (i, t)
            heapq.heappush(heap, (int(t[0]), int(i[0]), c))
        return np.array(gone, np.int64)

    def _seen(self, wb: WriteBatch, user: int, m: "UserMeta", added: np.ndarray, evicted: np.ndarray) -> None:
        """Count changes of the added and evicted items, then split / merge buckets until the
        bucket count matches the distinct-item count again."""
        st = self.st
        d_items, d_counts = item_deltas(added, evicted)
        if not d_items.size:
            return
        n = m.buckets or 1
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def load(b: int) -> tuple[np.ndarray, np.ndarray]:
            if b not in cache:
                v = st._get(hkey(user, b))
                cache[b] = decode_bucket(v) if v is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
            return cache[b]

        changed: set[int] = set()
        # many changes (>= n/2 deltas: most buckets touched): one vectorised pass over every bucket
        # costs less than ~30 us of numpy per touched bucket (a backlog's ~1,000 events of a user
        # per batch: 0.30-0.36 -> 0.22 s of the single-event ingest pass); a live batch's few
        # events of a user keep the bucket-by-bucket update
        if 2 * d_items.size >= n:
            return self._seen_rebuild(wb, user, m, d_items, d_counts, load)
        bk = bucket_of(d_items, n)
        if bk.size == 1 or (bk == bk[0]).all():
            groups = [np.arange(bk.size)]
        else:
            order = np.argsort(bk, kind="stable")
            sb = bk[order]
            groups = np.split(order, np.flatnonzero(sb[1:] != sb[:-1]) + 1)
        for grp in groups:
            b = int(bk[grp[0]])
            items, counts = load(b)
            new_items, new_counts = apply_deltas(items, counts, d_items[grp], d_counts[grp])
            m.distinct += int(new_items.size - items.size)
            cache[b] = (new_items, new_counts)
            changed.add(b)
        want = bucket_count(m.distinct)
        while n < want:  # split one bucket into itself and bucket n
            s = split_source(n)
            cache[s], cache[n] = split_bucket(*load(s), n)
            changed |= {s, n}
            n += 1
        while n > want:  # merge bucket n - 1 into the one it folds back to
            items, counts = load(n - 1)
            t = (n - 1) - (1 << ((n - 1).bit_length() - 1))
            ti, tc = load(t)
            both_i, both_c = np.concatenate([ti, items]), np.concatenate([tc, counts])
            o = np.argsort(both_i)
            cache[t] = (both_i[o], both_c[o])
            cache[n - 1] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
            changed |= {t, n - 1}
            n -= 1
        for b in changed:
            items, counts = cache[b]
            if items.size:
                self._put(wb, hkey(user, b), encode_bucket(items, counts))
            else:
                self._delete(wb, hkey(user, b))
        m.buckets = n

    def _seen_rebuild(self, wb: WriteBatch, user: int, m: "UserMeta", d_items: np.ndarray,
                      d_counts: np.ndarray, load) -> None:
        """The same result as bucket-by-bucket updates and splits (the layout is a function of
        the item multiset), in one vectorised pass over every bucket."""
        n = m.buckets or 1
        parts = [load(b) for b in range(n)]
        if not any(p[0].size for p in parts):  # a user's first items: the deltas are the index
            uniq, total = d_items, d_counts
        else:
            items = np.concatenate([p[0] for p in parts] + [d_items])
            counts = np.concatenate([p[1] for p in parts] + [d_counts])
            uniq, inv = np.unique(items, return_inverse=True)
            total = np.bincount(inv, weights=counts, minlength=uniq.size).astype(np.int64)
        if (total < 0).any():
            raise AssertionError("seen-item count below zero: state corrupted")
        keep = total > 0
        uniq, total = uniq[keep], total[keep]
        want, buckets = layout(uniq, total)
        for b, buf in buckets:
            self._put(wb, hkey(user, b), buf)
        filled = {b for b, _ in buckets}
        for b in range(n):
            if b not in filled and parts[b][0].size:
                self._delete(wb, hkey(user, b))
        m.distinct, m.buckets = int(uniq.size), want

    # ---- re-deriving contexts ------------------------------------------------------------
    def reindex(self, batch_users: int = 1000) -> int:
        """Re-derive every user's context index (and seen items) from the stored events under
        the store's current table, deduplicating (item, ts) stored under two contexts; records
        the table's fingerprint last, so a crash midway leaves a state that asks again."""
        st = self.st
        users = list(st.users())
        for lo in range(0, len(users), batch_users):
            wb = WriteBatch(raw_mode=True)
            st._pending.clear()
            for u in users[lo:lo + batch_users]:
                old = st._load_meta(u)
                seq = st.sequence(u)
                keep = np.ones(len(seq), bool)
                keep[1:] = (seq.ts[1:] != seq.ts[:-1]) | (seq.items[1:] != seq.items[:-1])
                items, ts = seq.items[keep], seq.ts[keep]
                prefix = ukey(u)
                for k in st.db.keys(from_key=prefix):
                    if not k.startswith(prefix):
                        break
                    self._delete(wb, k)
                m = UserMeta(old.newest, {}, 1, 0)
                ctxs = st.contexts.context_of(items).astype(np.int64)
                for c in np.unique(ctxs).tolist():
                    sel = ctxs == c
                    self._merge(wb, u, int(c), m, items[sel], ts[sel], None)
                gone = self._evict(wb, u, m)  # a smaller cap than the state was built with
                self._seen(wb, u, m, items, gone)
                self._put(wb, mkey(u), m.pack())
            st.commit(wb)
        st.db.put(INFO_KEY, st._info_value(), st._wopts)
        return len(users)
