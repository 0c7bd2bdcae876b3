"""The server tier: a real Milvus standalone server (session fixture ``milvus_server``).

Per-context partitions: FLAT equals numpy exact top-k, HNSW keeps its recall; coalesced
concurrent searches return what single searches return, in fewer requests; re-indexing the
same bundle is idempotent; a new bundle version is rolled out through the alias while queries
keep answering, and every answer equals the offline reference of the version it reports."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from longretriever.benchmarks.synthetic import MemoryState, random_histories, synthetic_bundle
from longretriever.core.ranking import exact_search
from longretriever.core.errors import BundleError
from longretriever.core.planner import context_sizes, retrieve_offline
from longretriever.retriever.milvus_index import MilvusIndex
from longretriever.retriever.rollout import RolloutWatcher
from longretriever.retriever.service import RetrieverService

pytestmark = pytest.mark.integration
DIM = 16


def _name() -> str:
    return f"t_{uuid.uuid4().hex[:8]}"


def _queries(rng, contexts, n):
    out = []
    for _ in range(n):
        v = rng.standard_normal((len(contexts), DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out.append(dict(zip(contexts, v)))
    return out


@pytest.fixture(scope="module")
def bundle():
    return synthetic_bundle(20_000, n_contexts=4, dim=DIM, seed=7)


@pytest.fixture(scope="module")
def flat(milvus_server, bundle):
    ix = MilvusIndex(milvus_server, _name())
    st = ix.build(bundle, "flat", batch=4000, progress=False)
    assert st["layout"] == "partition" and st["index"] == "FLAT" and st["created"] and st["items"] == 20_000
    ix.open(bundle.version, len(bundle.item_ids), context_sizes(bundle.item_contexts))
    yield ix
    ix.close()


def _exact(bundle, c, v, n):
    m = bundle.item_contexts == c
    return [h.item_id for h in exact_search(v, bundle.item_ids[m], bundle.item_embeddings[m], n, c)]


def test_flat_partitions_equal_numpy_exact(flat, bundle):
    assert flat.view.layout == "partition" and flat.view.collection != flat.collection  # alias -> version
    topk = {1: 50, 2: 1, 3: 300, 4: 0}
    for vecs in _queries(np.random.default_rng(0), [1, 2, 3, 4], 4):
        got = flat.search_contexts(vecs, topk)
        assert got[4] == []
        for c in (1, 2, 3):
            assert [h.item_id for h in got[c]] == _exact(bundle, c, vecs[c], topk[c])
            assert all(h.context == c for h in got[c])


def test_hnsw_partitions_keep_recall(milvus_server, bundle):
    with MilvusIndex(milvus_server, _name(), ef=400) as ix:
        st = ix.build(bundle, "hnsw", batch=4000, progress=False)
        assert st["index"] == "HNSW" and st["items"] == 20_000  # returned only once indexed
        ix.open(bundle.version, len(bundle.item_ids), context_sizes(bundle.item_contexts))
        hits = total = 0
        for vecs in _queries(np.random.default_rng(1), [1, 2, 3, 4], 5):
            got = ix.search_contexts(vecs, {c: 200 for c in vecs})
            for c, v in vecs.items():
                want = set(_exact(bundle, c, v, 200))
                hits += len(want & {h.item_id for h in got[c]})
                total += len(want)
        assert hits / total >= 0.98, hits / total


def test_coalesced_concurrent_searches_equal_single_searches(flat, bundle):
    queries = _queries(np.random.default_rng(2), [1, 2, 3, 4], 24)
    topk = {1: 20, 2: 40, 3: 60, 4: 80}
    single = MilvusIndex(flat.uri, flat.collection, coalesce=False)
    single.open(bundle.version, len(bundle.item_ids), context_sizes(bundle.item_contexts))
    want = [single.search_contexts(v, topk) for v in queries]
    single.close()
    before = (flat.coalescer.requests, flat.coalescer.vectors)
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda v: flat.search_contexts(v, topk), queries))
    requests = flat.coalescer.requests - before[0]
    vectors = flat.coalescer.vectors - before[1]
    assert vectors == len(queries) * 4
    assert requests < vectors  # some searches travelled together
    for g, w in zip(got, want):
        assert {c: [h.item_id for h in g[c]] for c in g} == {c: [h.item_id for h in w[c]] for c in w}


def test_reindex_same_bundle_is_idempotent_and_version_checked(flat, bundle):
    again = flat.build(bundle, "flat", batch=4000, progress=False)
    assert not again["created"] and again["target"] == flat.view.collection
    with pytest.raises(BundleError):
        flat.open("another-version")
    with pytest.raises(BundleError):
        flat.open(bundle.version, expected_items=1)


def test_rollout_swaps_bundle_and_collection_between_requests(milvus_server):
    v1 = synthetic_bundle(3000, n_contexts=4, dim=DIM, seed=1)
    v2 = synthetic_bundle(3000, n_contexts=4, dim=DIM, seed=2, item_contexts=v1.item_contexts)
    assert v1.version != v2.version and (v1.item_ids == v2.item_ids).all()
    state = MemoryState.for_bundle(v1)
    random_histories(v1, state, users=30, events=80)
    alias = _name()
    ix = MilvusIndex(milvus_server, alias)
    ix.build(v1, "flat", progress=False)
    view = ix.open(v1.version, len(v1.item_ids), context_sizes(v1.item_contexts))
    service = RetrieverService(v1, ix.pinned(view), state)
    bundles = {b.version: b for b in (v1, v2)}
    watcher = RolloutWatcher(ix, service, lambda version, path: bundles[version], interval=0.1).start()
    answers, errors = [], []
    stop = threading.Event()

    def load():
        u = 0
        while not stop.is_set():
            try:
                r = service.retrieve(u % 30, 30, 4, True, timeout=5)
                answers.append((u % 30, r.model_version, [c.item_id for c in r.candidates]))
            except Exception as exc:  # noqa: BLE001 - counted: there must be none
                errors.append(exc)
            u += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        builder = MilvusIndex(milvus_server, alias)
        st = builder.build(v2, "flat", progress=False, drop_old_after=1.0)  # the `index` command
        builder.close()
        deadline = time.monotonic() + 20
        while service.model_version != v2.version and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # answers from the new version
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        watcher.stop()
    try:
        assert errors == []
        assert st["previous"] is not None and st["previous"] != st["target"]
        assert st["dropped"] == [st["previous"]] and not ix.exists(st["previous"])  # old one dropped
        assert service.model_version == v2.version and watcher.swaps == 1
        seen = {v for _, v, _ in answers}
        assert seen == {v1.version, v2.version}
        # every answer is exactly the offline reference of the version it reports
        for user, version, items in answers[:: max(1, len(answers) // 150)]:
            s = state.sequence(user)
            ref = retrieve_offline(bundles[version], s.items, s.ts, s.contexts, 30, 4, True)
            assert items == [c.item_id for c in ref], (user, version)
    finally:
        ix.close()
