"""A query's seen-item checks read each seen-item bucket once per snapshot, and every answer
equals membership in the stored sequence."""

from __future__ import annotations

import numpy as np

from longretriever.core.contexts import ContextTable
from longretriever.stream.records import hkey_prefix
from longretriever.stream.state import StateStore


def test_seen_checks_read_each_bucket_once_per_snapshot(tmp_path):
    ctx = ContextTable.from_mapping({i: f"c{i % 4}" for i in range(5000)})
    s = StateStore(tmp_path / "s", ctx)
    rng = np.random.default_rng(2)
    items = rng.integers(0, 5000, 3000)
    s.apply(np.full(3000, 7), items, 1_600_000_000_000 + np.arange(3000) * 1000, {0: 0})
    stored = s.sequence(7).items
    reads: list[bytes] = []
    get = s._get
    s._get = lambda key: (reads.append(key), get(key))[1]  # count RocksDB reads
    bucket_keys = lambda: [k for k in reads if k.startswith(hkey_prefix(7))]  # noqa: E731
    first = rng.integers(0, 6000, 50)
    block = np.arange(0, 6000)  # a whole block of ids: every bucket
    with s.reading():
        a = s.seen_mask(7, first)
        n_first = len(bucket_keys())
        b = s.seen_mask(7, block)
        c = s.seen_mask(7, first)  # again: nothing new to read
        assert len(bucket_keys()) == len(set(bucket_keys()))  # no bucket read twice
    assert 0 < n_first < len(bucket_keys())
    assert np.array_equal(a, np.isin(first, stored)) and np.array_equal(c, a)
    assert np.array_equal(b, np.isin(block, stored)) and b.any() and (~b).any()
    # outside a snapshot the answer is the same (nothing kept between calls)
    assert np.array_equal(s.seen_mask(7, block), b)
    s.close()


def test_seen_checks_with_64_bit_ids_among_32_bit_ones(tmp_path):
    # buckets_ids joins the id slices of 32-bit buckets; a bucket holding a 64-bit id is read
    # per bucket -- both within one check, answers still exact
    ctx = ContextTable.from_mapping({i: "c0" for i in range(100)})
    s = StateStore(tmp_path / "s", ctx)
    rng = np.random.default_rng(4)
    items = np.concatenate([rng.integers(0, 2**31 - 1, 400), np.array([2**40, 2**33 + 5, -(2**35)])])
    s.apply(np.full(items.size, 3), items, 1_600_000_000_000 + np.arange(items.size) * 1000, {0: 0})
    probe = np.concatenate([items[::3], items[-3:], rng.integers(0, 2**31 - 1, 200), np.array([2**40 + 1])])
    with s.reading():  # one bucket per call first (each path alone), then all of them
        one = np.array([s.seen_mask(3, probe[i:i + 1])[0] for i in range(0, probe.size, 7)])
        got = s.seen_mask(3, probe)
    assert np.array_equal(one, np.isin(probe[::7], items))
    assert np.array_equal(got, np.isin(probe, items)) and got.sum() >= 137
    s.close()
