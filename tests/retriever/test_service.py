"""Milvus request building / result parsing; the service and the refresher on in-memory stand-ins."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from longretriever.benchmarks.synthetic import MemoryState, synthetic_bundle
from longretriever.core import planner as pl
from longretriever.core.context_predictor import ContextPredictor, num_features
from longretriever.core.errors import BundleError, ConfigError, InputError
from longretriever.core.multicontext import Candidate
from longretriever.core.ranking import ExactSearch
from longretriever.retriever import milvus_requests as mr
from longretriever.retriever.refresh import Refresher, VectorCache
from longretriever.retriever.service import RetrieverService, format_watermark

def test_request_building_and_parsing():
    d = mr.description_for("v42")
    assert mr.version_from_description(d) == "v42"
    mr.check_version(d, "v42", "c")
    with pytest.raises(BundleError):
        mr.check_version(d, "v43", "c")
    with pytest.raises(BundleError):
        mr.check_version("", "v43", "c")
    assert mr.index_spec("flat")["index_type"] == "FLAT"
    assert mr.index_spec("HNSW")["index_type"] == "HNSW"
    assert mr.index_spec("ivf", 100_000)["params"]["nlist"] == int(4 * np.sqrt(100_000))
    with pytest.raises(ConfigError):
        mr.index_spec("annoy")
    with pytest.raises(ConfigError):
        mr.check_collection_name("1bad-name")
    assert not mr.is_lite_uri("http://h:19530") and mr.is_lite_uri("./milvus.db")
    assert mr.context_filter(3) == "context == 3"
    s = mr.build_context_searches({1: np.ones(4), 2: np.zeros(4), 3: np.ones(4)}, {1: 5, 2: 0, 3: 20_000},
                                  context_sizes={1: 3, 3: 50_000})
    assert [(x.context, x.limit, x.filter) for x in s] == [(1, 3, "context == 1"), (3, mr.MAX_TOPK, "context == 3")]
    assert s[0].vector.dtype == np.float32
    with pytest.raises(KeyError):
        mr.build_context_searches({}, {4: 1})
    hits = [{"id": 5, "distance": 0.5}, {"id": 3, "distance": 0.9}, SimpleNamespace(id=4, distance=0.5)]
    assert mr.parse_hits(hits, 2) == [Candidate(3, 0.9, 2), Candidate(4, 0.5, 2), Candidate(5, 0.5, 2)]
    rows = mr.rows(np.array([7, 8]), np.array([1, 2], np.int32), np.ones((2, 3)))
    assert rows[0]["id"] == 7 and rows[1]["context"] == 2 and rows[0]["vec"].dtype == np.float32
    assert list(mr.iter_batches(5, 2)) == [(0, 2), (2, 4), (4, 5)]
    assert pl.context_sizes(np.array([1, 1, 3])) == {1: 2, 3: 1}
    assert format_watermark({1: 5, 0: 9}) == "0:9,1:5"


# ---- service wiring with the shared in-memory stand-ins --------------------------------------
def small_bundle(n=60, d=8, seed=0, k=2, w=3, predictor=None):
    """Items 100.. in contexts 1, 2, 3 (round robin) with a mean-pooling encoder session."""
    return synthetic_bundle(n, 3, d, seed, hard_k=k, w=w, first_id=100,
                            item_contexts=(np.arange(n) % 3 + 1).astype(np.int32), predictor=predictor)


def _reference(bundle, items, ts, k, max_contexts=8):
    cx = bundle.item_contexts[np.searchsorted(bundle.item_ids, items)]
    return pl.retrieve_offline(bundle, items, ts, cx, k, max_contexts)


def test_service_matches_reference_and_uses_cache():
    b = small_bundle()
    st = MemoryState.for_bundle(b)
    st.offsets = {0: 42}
    items = np.array([100, 101, 103, 104, 106, 102, 109])
    ts = np.array([5, 1, 3, 4, 2, 6, 7])
    st.add(7, items, ts)
    cache = VectorCache()
    svc = RetrieverService(b, ExactSearch.of(b), st, cache)
    r = svc.retrieve(7, 10, 8, True)
    assert not r.fallback and r.model_version == b.version and r.watermark == "0:42"
    assert [c.item_id for c in r.candidates] == [c.item_id for c in _reference(b, items, ts, 10)]
    assert not set(items.tolist()) & {c.item_id for c in r.candidates}
    rows = b.session.rows
    r2 = svc.retrieve(7, 10, 8, True)
    assert r2.candidates == r.candidates and b.session.rows == rows  # served from cache

    # a new event: the refresher recomputes every cached context of the user in one batch
    st.add(7, np.array([111]), np.array([8]))
    ref = Refresher(b, st, cache)
    n = ref.refresh({7: {int(b.item_contexts[11])}})
    assert n == 3
    rows = b.session.rows
    r3 = svc.retrieve(7, 10, 8, True)
    assert b.session.rows == rows  # fresh after refresh
    assert [c.item_id for c in r3.candidates] == [c.item_id for c in _reference(
        b, np.append(items, 111), np.append(ts, 8), 10)]


def test_service_cold_user_falls_back():
    b = small_bundle()
    svc = RetrieverService(b, ExactSearch.of(b), MemoryState.for_bundle(b))
    r = svc.retrieve(99, 6, 2, True)
    assert r.fallback and len(r.candidates) == 6
    assert {c.context for c in r.candidates} <= {1, 2, 3}
    with pytest.raises(InputError):
        svc.retrieve(-1, 6, 2, True)


def test_refresher_background_thread():
    b = small_bundle()
    st = MemoryState.for_bundle(b)
    st.add(1, np.array([100, 101]), np.array([1, 2]))
    cache = VectorCache()
    cache.put(1, 1, b"stale", np.zeros(4, np.float32))  # a vector a query cached earlier
    ref = Refresher(b, st, cache).start()
    try:
        ref.on_applied({1: {1, 2}})
        import time
        for _ in range(100):
            if ref.refreshed_rows:
                break
            time.sleep(0.01)
        # the stale cached vector is recomputed; context 2 was never queried: not computed
        assert ref.refreshed_rows == 1 and len(cache) == 1
        assert cache.contexts_of(1) == set()  # refreshed, not read since
        assert cache.get(1, 1, b"stale") is None
    finally:
        ref.stop()
    spec = Refresher(b, st, VectorCache(), speculative=True)
    assert spec.refresh({1: {1, 2}}) == 2


def test_refresher_follows_demand():
    """A refreshed vector nobody read is not refreshed again: at most one refresh per read."""
    b = small_bundle()
    st = MemoryState.for_bundle(b)
    st.add(1, np.array([100, 101]), np.array([1, 2]))
    cache = VectorCache()
    svc = RetrieverService(b, ExactSearch.of(b), st, cache)
    ref = Refresher(b, st, cache)
    first = svc.retrieve(1, 5, 8, True)
    queried = cache.contexts_of(1)
    assert queried and len(cache) == len(queried)
    st.add(1, np.array([100]), np.array([3]))
    assert ref.refresh({1: {1}}) == len(queried)
    rows = b.session.rows
    assert svc.retrieve(1, 5, 8, True).candidates  # served from the refreshed entries
    assert b.session.rows == rows and cache.contexts_of(1) == queried
    st.add(1, np.array([101]), np.array([4]))
    assert ref.refresh({1: {1}}) == len(queried)  # read since the last refresh: refreshed
    st.add(1, np.array([100]), np.array([5]))
    assert ref.refresh({1: {1}}) == 0  # not read since: no encoder work for nobody
    hits = cache.hits
    svc.retrieve(1, 5, 8, True)  # stale: computed inline, wanted again
    assert cache.hits == hits and cache.contexts_of(1) == queried
    assert ref.refresh({1: {1}}) == len(queried) and first.candidates


@pytest.mark.parametrize("choice", ["frequency", "learned"])
def test_service_equals_export_reference_random_histories(choice):
    rng_p = np.random.default_rng(5)
    predictor = ContextPredictor(rng_p.standard_normal((num_features(4), 4)), rng_p.standard_normal(4))
    b = small_bundle(n=90, seed=3, k=3, w=4, predictor=predictor)
    st = MemoryState.for_bundle(b)
    svc = RetrieverService(b, ExactSearch.of(b), st, VectorCache(), context_choice=choice)
    rng = np.random.default_rng(11)
    n_differ = 0
    for user in range(12):
        n = int(rng.integers(1, 40))
        items = rng.choice(b.item_ids, size=n)  # repeats allowed
        ts = rng.integers(0, 20, size=n)  # timestamp ties exercise the canonical order
        st.add(user, items, ts)
        s = st.sequence(user)  # the history as the state keeps it: an exact (item, ts) repeat once
        items, ts, cx = s.items, s.ts, s.contexts
        for k, mc, ex in [(5, 8, True), (17, 2, True), (9, 1, False)]:
            want = pl.retrieve_offline(b, items, ts, cx, k, max_contexts=mc, exclude_seen=ex,
                                        context_choice=choice)
            other = pl.retrieve_offline(b, items, ts, cx, k, max_contexts=mc, exclude_seen=ex,
                                         context_choice="learned" if choice == "frequency" else "frequency")
            n_differ += [c.item_id for c in other] != [c.item_id for c in want]
            got = svc.retrieve(user, k, mc, ex)
            assert [c.item_id for c in got.candidates] == [c.item_id for c in want], (user, k, mc, ex)
    assert n_differ > 0  # the two choices really are different plans


def test_user_sequence_limit_reads_the_newest_events(tmp_path):
    """GetUserSequence's backend on a real RocksDB state: newest ``limit`` events, oldest first,
    per context too; ``total`` counts them all."""
    from longretriever.core.contexts import ContextTable
    from longretriever.stream.state import StateStore

    b = small_bundle()
    table = ContextTable(tuple(b.context_names), np.asarray(b.item_ids, np.int64),
                         np.asarray(b.item_contexts, np.int32))
    store = StateStore(tmp_path / "state", table, segment_events=16)
    rng = np.random.default_rng(3)
    n = 300
    items = rng.choice(b.item_ids, n)
    ts = np.arange(n, dtype=np.int64) * 1000
    store.apply(np.full(n, 7, np.int64), items, ts, {0: n})
    svc = RetrieverService(b, None, store)
    try:
        whole = svc.user_sequence(7)
        assert len(whole.items) == n == whole.total
        r = svc.user_sequence(7, None, 25)
        np.testing.assert_array_equal(r.items, whole.items[-25:])
        np.testing.assert_array_equal(r.ts, whole.ts[-25:])
        assert r.total == n
        ctx = int(whole.contexts[-1])
        mine = whole.contexts == ctx
        r = svc.user_sequence(7, ctx, 10)
        np.testing.assert_array_equal(r.items, whole.items[mine][-10:])
        assert (r.contexts == ctx).all() and r.total == int(mine.sum())
        assert svc.user_sequence(8, None, 10).total == 0
        with pytest.raises(InputError):
            svc.user_sequence(7, None, 0)
    finally:
        store.close()
