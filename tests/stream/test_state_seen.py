"""The seen-item index (stream.seen via StateStore): exact against the stored sequence under any
batching, the cap and bucket splits/merges; a membership check reads O(len(items)) keys of
bounded size, independent of the history; bytes per event stay <= 16 with every item distinct;
duplicates of stored events are duplicates whatever their age."""

from __future__ import annotations

import numpy as np
import pytest

from longretriever.core.contexts import ContextTable
from longretriever.stream import seen, writer_fast
from longretriever.stream.records import UserMeta
from longretriever.stream.state import StateStore

CTX = ContextTable.from_mapping({i: f"c{i % 5}" for i in range(0, 3000)})
BASE = 1_600_000_000_000


def _truth_counts(store: StateStore, user: int) -> dict[int, int]:
    s = store.sequence(user)
    items, counts = np.unique(s.items, return_counts=True)
    return dict(zip(items.tolist(), counts.tolist()))


def _check_index(store: StateStore, user: int) -> None:
    items, counts = store.seen_items(user)
    assert dict(zip(items.tolist(), counts.tolist())) == _truth_counts(store, user)
    m = store._load_meta(user)
    assert m.distinct == items.size and m.buckets == seen.bucket_count(items.size)
    # every id sits in the bucket the hash says (the layout is a function of the item set)
    for b in range(m.buckets):
        v = store._get(b"u" + user.to_bytes(8, "big", signed=True) + b"h" + b.to_bytes(4, "big"))
        if v is not None:
            bi, _ = seen.decode_bucket(v)
            assert (seen.bucket_of(bi, m.buckets) == b).all() and (np.diff(bi) > 0).all()


@pytest.mark.parametrize("max_len,n_items", [(100_000, 2500), (300, 2500), (300, 40), (50, 3000)])
def test_seen_index_is_exact_under_batching_cap_and_resizes(tmp_path, max_len, n_items):
    rng = np.random.default_rng(max_len + n_items)
    n = 4000
    u = rng.integers(0, 3, n)
    it = rng.integers(0, n_items, n)
    t = BASE + np.sort(rng.integers(0, 10**7, n)) * 10
    digests = []
    for run, sizes in enumerate([[n], [1] * 300 + [n], list(rng.integers(1, 400, 30)) + [n]]):
        store = StateStore(tmp_path / f"s{run}", CTX, max_len=max_len, segment_events=32,
                           late_tolerance_ms=10**13)
        lo = 0
        for size in sizes:
            hi = min(n, lo + int(size))
            if lo < hi:
                store.apply(u[lo:hi], it[lo:hi], t[lo:hi], {0: hi})
                for user in np.unique(u[lo:hi]).tolist():
                    _check_index(store, user)
            lo = hi
        probe = np.concatenate([np.arange(-5, n_items + 5), it[:50]])
        for user in range(3):
            np.testing.assert_array_equal(store.seen_mask(user, probe),
                                          np.isin(probe, store.sequence(user).items))
        assert not store.seen_mask(99, probe).any()  # unknown user
        digests.append(store.digest())
        store.close()
    assert len(set(digests)) == 1


def test_seen_mask_reads_do_not_grow_with_history(tmp_path):
    """k candidate ids read the meta record plus at most k buckets, each of bounded size,
    whether the user has 1,000 or 60,000 distinct items."""
    store = StateStore(tmp_path / "s", ContextTable.single(), max_len=100_000)
    for user, n in ((1, 1_000), (2, 60_000)):
        items = np.arange(n) * 7 + 11
        store.apply(np.full(n, user), items, BASE + np.arange(n) * 1000, {0: n})
    reads: list[int] = []
    inner = store._get
    store._get = lambda key: reads.append(len(v := inner(key) or b"")) or v  # type: ignore[method-assign]
    q = np.arange(200) * 7 + 11
    for user in (1, 2):
        reads.clear()
        assert store.seen_mask(user, q).all()
        assert len(reads) <= 1 + q.size
        assert max(reads[1:]) <= 5 + 9 * 4 * seen.TARGET  # no bucket holds more than ~4x the mean
    reads.clear()
    store.seen_mask(2, q[:3])
    assert len(reads) <= 4
    store.close()


def test_bytes_per_event_with_every_item_distinct(tmp_path):
    store = StateStore(tmp_path / "s", ContextTable.single())
    n = 30_000
    for user in range(3):
        store.apply(np.full(n, user), np.arange(n) + user * n, BASE + np.arange(n) * 1000, {0: n})
    used, events = store.storage_bytes()
    assert events == 3 * n
    assert used / events <= 16, used / events
    store.close()


def test_old_duplicates_are_duplicates_and_new_old_events_are_late(tmp_path):
    day = 24 * 3600 * 1000
    store = StateStore(tmp_path / "s", CTX, late_tolerance_ms=2 * day, segment_events=16)
    n = 500
    items = np.arange(n) % 97
    ts = BASE + np.arange(n) * (day // 10)  # 50 days
    store.apply(np.ones(n), items, ts, {0: n})
    digest = store.digest()
    # the whole history again, in order and shuffled, single events and one batch
    for order in (np.arange(n), np.random.default_rng(1).permutation(n)):
        r = store.apply(np.ones(n), items[order], ts[order], {0: 2 * n})
        assert (r.appended, r.duplicates, r.late, r.evicted) == (0, n, [], 0)
        assert store.digest() == digest
    for i in (0, 137, n - 1):
        r = store.apply(np.ones(1), items[i:i + 1], ts[i:i + 1], {0: 3 * n})
        assert (r.appended, r.duplicates, r.late) == (0, 1, [])
    # a re-sent history writes nothing but the offsets
    wb, _ = store.prepare(np.ones(n), items, ts, {0: 4 * n})
    assert set(store._pending) == {b"o" + (0).to_bytes(4, "big")}
    store.commit(wb)
    # genuinely new events older than the tolerance are late; copies of them too
    old_new = np.array([5000, 5000, 5001])
    r = store.apply(np.ones(3), old_new, BASE + np.array([7, 7, 9]), {0: 5 * n})
    assert r.late == [0, 1, 2] and r.appended == 0 and r.duplicates == 0
    # in tolerance: inserted; its re-send is a duplicate
    r = store.apply(np.ones(2), np.array([5002, 5002]), ts[-1:].repeat(2) - day, {0: 6 * n})
    assert (r.appended, r.duplicates, r.late) == (1, 1, [])
    assert store.seen_mask(1, np.array([5000, 5002])).tolist() == [False, True]
    store.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_path_writes_exactly_what_the_general_path_writes(tmp_path, seed, monkeypatch):
    """stream.writer_fast (few events per user) is an optimisation: byte-identical state and
    identical results, including where it falls back (late, duplicates, out of order, full
    segments, the cap, splits)."""
    from longretriever.stream import writer

    taken, opened = [], []

    def spy(w, wb, user, *rest):
        before = set((w.st._load_meta(user) or UserMeta(None, {})).ctxs)
        taken.append(fast(w, wb, user, *rest))
        if taken[-1]:
            opened.append(len(set(w.st._load_meta(user).ctxs) - before))
        return taken[-1]

    monkeypatch.setattr(writer, "try_fast", spy)
    fast = writer_fast.try_fast
    rng = np.random.default_rng(seed)
    stores = [StateStore(tmp_path / f"s{f}", CTX, max_len=400, segment_events=16, late_tolerance_ms=5_000)
              for f in (0, 1)]
    stores[0]._writer.fast = False
    t = BASE
    for step in range(400):
        k = int(rng.integers(1, 12 if step % 4 else 150))
        # six heavy users (the cap, splits) and a growing crowd of new ones, whose first few
        # batches open contexts on the fast path
        u = np.where(rng.random(k) < 0.6, rng.integers(0, 6, k), rng.integers(6, 7 + step // 8, k))
        it = rng.integers(0, 300 if step % 3 else 3000, k)
        ts = t + np.sort(rng.integers(0, 3_000, k)) - (rng.random(k) < 0.1) * rng.integers(0, 20_000, k)
        dup = rng.random(k) < 0.1
        if step and dup.any():  # re-send the previous batch's first event
            it[dup], ts[dup], u[dup] = prev
        t += 2_000 if step % 50 else 10**11  # now and then a gap > 49 days: 64-bit timestamps
        results = [s.apply(u, it, ts, {0: step}) for s in stores]
        prev = (it[0], ts[0], u[0])
        a, b = results
        assert (a.appended, a.duplicates, a.evicted, a.late, a.touched) == \
               (b.appended, b.duplicates, b.evicted, b.late, b.touched)
    dumps = [dict(s.db.items()) for s in stores]
    assert dumps[0] == dumps[1]
    assert sum(t != 0 for t in taken) > 200 and taken.count(0) > 100  # both paths really ran
    assert sum(x > 0 for x in opened) > 50  # and the fast one opened contexts
    assert taken.count(writer_fast.TAKEN_NEW_USER) > 20  # ... and started new users
    assert stores[1]._writer.tail_ends  # ... and read tail ends from its memo
    for s in stores:
        s.close()


def test_fast_path_widens_counts_like_the_general_path(tmp_path):
    """A seen-item count passing 255 (then 65,535) needs a wider count type: the fast path's
    spliced buckets re-encode exactly as stream.seen does."""
    stores = [StateStore(tmp_path / f"s{f}", CTX, segment_events=64) for f in (0, 1)]
    stores[0]._writer.fast = False
    t = BASE
    for step in range(300):  # item 7 re-consumed 300 times, next to a few others
        items = np.array([7, 7, 11 + step % 5])
        for s in stores:
            s.apply(np.ones(3, np.int64), items, t + np.arange(3), {0: step})
        t += 10
    dumps = [dict(s.db.items()) for s in stores]
    assert dumps[0] == dumps[1]
    assert stores[1].seen_items(1)[1].max() == 600  # counts held beyond one byte
    for s in stores:
        s.close()


@pytest.mark.parametrize("id_hi,count_hi", [(3000, 5), (2**31 - 1, 300), (2**40, 5), (2**31 - 1, 70_000)])
def test_layout_writes_what_encode_bucket_writes_per_bucket(id_hi, count_hi):
    """seen.layout slices whole-index byte strings in the common case (int32 ids, counts
    < 256): the same bytes as encoding each bucket on its own, in every layout."""
    rng = np.random.default_rng(id_hi % 97 + count_hi)
    for size in (1, 31, 32, 33, 1000, 5000):
        items = np.unique(rng.integers(-id_hi, id_hi, size))
        counts = rng.integers(1, count_hi, items.size)
        n, got = seen.layout(items, counts)
        bk = seen.bucket_of(items, n)
        want = [(b, seen.encode_bucket(items[bk == b], counts[bk == b])) for b in range(n) if (bk == b).any()]
        assert n == seen.bucket_count(items.size) and got == want
