"""Pure planner (hand-checked), request building / result parsing, service wiring with fakes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from longretriever.core.errors import BundleError, ConfigError, InputError
from longretriever.core.multicontext import Candidate
from longretriever.retriever import milvus_requests as mr
from longretriever.retriever import query as q
from longretriever.retriever.refresh import Refresher, VectorCache
from longretriever.retriever.service import RetrieverService, format_watermark

# events (ts, item, context) given out of order; canonical order is by (ts, item)
EV = [(4, 103, 1), (1, 101, 1), (5, 202, 2), (2, 102, 1), (3, 201, 2)]
TS = np.array([e[0] for e in EV]); IT = np.array([e[1] for e in EV]); CX = np.array([e[2] for e in EV])


def test_plan_hand_checked():
    # weights: c1 = e^-4/200 + e^-3/200 + e^-1/200 = 2.9603, c2 = e^-2/200 + 1 = 1.9900
    # k=5 shares: c1 2.990, c2 2.010 -> floors 2,2; the spare slot goes to c1 (largest remainder)
    plan = q.plan_from_sequence(IT, TS, CX, k=5, hard_k=2, w=3, max_contexts=8)
    assert [c.context for c in plan.contexts] == [1, 2]
    assert plan.quotas == {1: 3, 2: 2}
    assert plan.contexts[0].weight == pytest.approx(np.exp(-4 / 200) + np.exp(-3 / 200) + np.exp(-1 / 200))
    assert plan.contexts[0].ctx_items.tolist() == [102, 103]  # newest 2 of context 1, oldest first
    assert plan.contexts[1].ctx_items.tolist() == [201, 202]
    assert plan.recent_items.tolist() == [201, 103, 202]  # newest 3 overall
    assert plan.topk == {1: 3 + 3, 2: 2 + 2}  # quota + distinct seen items of the context
    assert plan.exclude == {101, 102, 103, 201, 202}
    ctx_items, recent, ctxs = plan.encoder_rows()
    assert ctxs == [1, 2] and all(r.tolist() == [201, 103, 202] for r in recent)

    one = q.plan_from_sequence(IT, TS, CX, k=5, hard_k=2, w=3, max_contexts=1)
    assert one.quotas == {1: 5}
    no_excl = q.plan_from_sequence(IT, TS, CX, k=5, hard_k=2, w=3, exclude_seen=False)
    assert no_excl.topk == {1: 3, 2: 2} and no_excl.exclude == frozenset()
    capped = q.plan_from_sequence(IT, TS, CX, k=5, hard_k=2, w=3, context_sizes={1: 4, 2: 100})
    assert capped.topk == {1: 4, 2: 4}
    only2 = q.plan_from_sequence(IT, TS, CX, k=5, hard_k=2, w=3, context_sizes={1: 0, 2: 10})
    assert only2.quotas == {2: 5}
    assert q.plan_from_sequence(IT[:0], TS[:0], CX[:0], 5, 2, 3) is None
    assert q.plan_from_sequence(IT, TS, CX, 5, 2, 3, context_sizes={7: 3}) is None


def test_merge_results_excludes_seen_and_keeps_quotas():
    plan = q.plan_from_sequence(IT, TS, CX, k=5, hard_k=2, w=3)
    per = {1: [Candidate(103, .99, 1), Candidate(110, .9, 1), Candidate(111, .5, 1), Candidate(112, .1, 1)],
           2: [Candidate(201, .95, 2), Candidate(210, .8, 2), Candidate(211, .7, 2), Candidate(212, .6, 2)],
           3: [Candidate(300, 5.0, 3)]}  # not chosen: ignored
    out = q.merge_results(plan, per)
    assert [c.item_id for c in out] == [110, 210, 211, 111, 112]


def test_validate_request():
    q.validate_request(0, 1, 1)
    q.validate_request(5, 10_000, 64)
    for args in [(-1, 5, 8), (1, 0, 8), (1, 10_001, 8), (1, 5, 0), (1, 5, 65)]:
        with pytest.raises(InputError):
            q.validate_request(*args)


def test_fallback_candidates():
    pop = {1: [11, 12, 13, 14], 2: [21, 22, 23]}
    out = q.fallback_candidates(lambda c, n: pop[c][:n], {1: 100, 2: 50, 3: 0}, k=3, max_contexts=8)
    # quotas by size: c1 2, c2 1; top of each context scores 1.0
    assert sorted(c.item_id for c in out) == [11, 12, 21]
    assert q.fallback_candidates(lambda c, n: pop[c][:n], {1: 100, 2: 50}, k=3, max_contexts=1)[0].context == 1


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
    assert mr.is_remote_uri("http://h:19530") and not mr.is_remote_uri("./milvus.db")
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
    assert mr.context_sizes(np.array([1, 1, 3])) == {1: 2, 3: 1}
    assert format_watermark({1: 5, 0: 9}) == "0:9,1:5"


# ---- service wiring with in-memory fakes --------------------------------------------------
class FakeBundle:
    def __init__(self, n=60, d=8, seed=0):
        rng = np.random.default_rng(seed)
        self.version = "fake-1"
        self.item_ids = np.arange(100, 100 + n, dtype=np.int64)
        self.item_contexts = (np.arange(n) % 3 + 1).astype(np.int32)
        v = rng.standard_normal((n, d)).astype(np.float32)
        self.item_embeddings = v / np.linalg.norm(v, axis=1, keepdims=True)
        self.context_names = ["unknown", "a", "b", "c"]
        self.config = {"k": 2, "w": 3}
        self.encoded_rows = 0
        self._pos = {int(i): j for j, i in enumerate(self.item_ids)}

    def encode(self, ctx_items, recent_items, contexts):
        self.encoded_rows += len(contexts)
        out = []
        for ci, ri, c in zip(ctx_items, recent_items, contexts):
            idx = [self._pos[int(i)] for i in list(ci) + list(ri)]
            v = self.item_embeddings[idx].sum(0) + 0.1 * c
            out.append(v / np.linalg.norm(v))
        return np.stack(out).astype(np.float32)

    def popular(self, context, n):
        return self.item_ids[self.item_contexts == context][:n]

    predictor = None
    context_choice = "frequency"

    def context_scorer(self, choice=None):
        return self.predictor if (choice or self.context_choice) == "learned" else None


class FakeState:
    def __init__(self, bundle):
        self.users = {}
        self.ctx = dict(zip(bundle.item_ids.tolist(), bundle.item_contexts.tolist()))

    def add(self, user, items, ts):
        its, tss = self.users.get(user, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        its, tss = np.concatenate([its, items]), np.concatenate([tss, ts])
        o = np.lexsort((its, tss))
        self.users[user] = (its[o], tss[o])

    def _seq(self, user):
        its, tss = self.users[user]
        return SimpleNamespace(items=its, ts=tss, contexts=np.array([self.ctx[i] for i in its.tolist()], np.int32),
                               __len__=None)

    def recent(self, user, n=1000):
        if user not in self.users:
            return None
        s = self._seq(user)
        return _Seq(s.items[-n:], s.ts[-n:], s.contexts[-n:])

    def context_tail(self, user, c, k):
        s = self._seq(user)
        m = s.contexts == c
        return s.items[m][-k:], s.ts[m][-k:]

    def context_items(self, user, c):
        s = self._seq(user)
        return s.items[s.contexts == c]

    def context_counts(self, user):
        s = self._seq(user)
        return {int(c): int((s.contexts == c).sum()) for c in np.unique(s.contexts)}

    def watermark(self):
        return {0: 42}


class _Seq(SimpleNamespace):
    def __init__(self, items, ts, contexts):
        super().__init__(items=items, ts=ts, contexts=contexts)

    def __len__(self):
        return int(self.items.size)


class ExactIndex:
    def __init__(self, bundle):
        self.b = bundle
        self.calls = 0

    def search_contexts(self, vectors, topk, timeout=None):
        self.calls += 1
        out = {}
        for c, n in topk.items():
            m = self.b.item_contexts == c
            out[c] = q.exact_search(vectors[c], self.b.item_ids[m], self.b.item_embeddings[m], n, c)
        return out


def _reference(bundle, items, ts, k, max_contexts=8):
    cx = bundle.item_contexts[np.searchsorted(bundle.item_ids, items)]
    sizes = mr.context_sizes(bundle.item_contexts)
    plan = q.plan_from_sequence(items, ts, cx, k, bundle.config["k"], bundle.config["w"], max_contexts,
                                True, sizes)
    ci, ri, cs = plan.encoder_rows()
    vecs = bundle.encode(ci, ri, cs)
    per = {}
    for (c, n), v in zip(plan.topk.items(), vecs):
        m = bundle.item_contexts == c
        per[c] = q.exact_search(v, bundle.item_ids[m], bundle.item_embeddings[m], n, c)
    return q.merge_results(plan, per)


def test_service_matches_reference_and_uses_cache():
    b = FakeBundle()
    st = FakeState(b)
    items = np.array([100, 101, 103, 104, 106, 102, 109])
    ts = np.array([5, 1, 3, 4, 2, 6, 7])
    st.add(7, items, ts)
    cache = VectorCache()
    svc = RetrieverService(b, ExactIndex(b), st, cache)
    r = svc.retrieve(7, 10, 8, True)
    assert not r.fallback and r.model_version == "fake-1" and r.watermark == "0:42"
    assert [c.item_id for c in r.candidates] == [c.item_id for c in _reference(b, items, ts, 10)]
    assert not set(items.tolist()) & {c.item_id for c in r.candidates}
    rows = b.encoded_rows
    r2 = svc.retrieve(7, 10, 8, True)
    assert r2.candidates == r.candidates and b.encoded_rows == rows  # served from cache

    # a new event: the refresher recomputes every cached context of the user in one batch
    st.add(7, np.array([111]), np.array([8]))
    ref = Refresher(b, st, cache)
    n = ref.refresh({7: {int(b.item_contexts[11])}})
    assert n == 3
    rows = b.encoded_rows
    r3 = svc.retrieve(7, 10, 8, True)
    assert b.encoded_rows == rows  # fresh after refresh
    assert [c.item_id for c in r3.candidates] == [c.item_id for c in _reference(
        b, np.append(items, 111), np.append(ts, 8), 10)]


def test_service_cold_user_falls_back():
    b = FakeBundle()
    svc = RetrieverService(b, ExactIndex(b), FakeState(b))
    r = svc.retrieve(99, 6, 2, True)
    assert r.fallback and len(r.candidates) == 6
    assert {c.context for c in r.candidates} <= {1, 2, 3}
    with pytest.raises(InputError):
        svc.retrieve(-1, 6, 2, True)


def test_refresher_background_thread():
    b = FakeBundle()
    st = FakeState(b)
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
        assert ref.refreshed_rows == 1 and cache.contexts_of(1) == {1}
        assert cache.get(1, 1, b"stale") is None
    finally:
        ref.stop()
    spec = Refresher(b, st, VectorCache(), speculative=True)
    assert spec.refresh({1: {1, 2}}) == 2


@pytest.mark.parametrize("choice", ["frequency", "learned"])
def test_service_equals_export_reference_random_histories(choice):
    ref = pytest.importorskip("longretriever.export.reference")
    from longretriever.core.features import ItemVocab

    b = FakeBundle(n=90, seed=3)
    b.config = {"k": 3, "w": 4}
    b.k, b.w = 3, 4
    b.vocab = ItemVocab.from_ids(b.item_ids)
    b.context_items = {c: np.flatnonzero(b.item_contexts == c) for c in (1, 2, 3)}
    from longretriever.core.context_predictor import ContextPredictor, num_features

    rng_p = np.random.default_rng(5)
    b.predictor = ContextPredictor(rng_p.standard_normal((num_features(4), 4)), rng_p.standard_normal(4))
    st = FakeState(b)
    svc = RetrieverService(b, ExactIndex(b), st, VectorCache(), context_choice=choice)
    rng = np.random.default_rng(11)
    n_differ = 0
    for user in range(12):
        n = int(rng.integers(1, 40))
        items = rng.choice(b.item_ids, size=n)  # repeats allowed
        ts = rng.integers(0, 20, size=n)  # timestamp ties exercise the canonical order
        st.add(user, items, ts)
        cx = b.item_contexts[np.searchsorted(b.item_ids, items)]
        for k, mc, ex in [(5, 8, True), (17, 2, True), (9, 1, False)]:
            want = ref.retrieve_offline(b, items, ts, cx, k, max_contexts=mc, exclude_seen=ex,
                                        context_choice=choice)
            other = ref.retrieve_offline(b, items, ts, cx, k, max_contexts=mc, exclude_seen=ex,
                                         context_choice="learned" if choice == "frequency" else "frequency")
            n_differ += [c.item_id for c in other] != [c.item_id for c in want]
            got = svc.retrieve(user, k, mc, ex)
            assert [c.item_id for c in got.candidates] == [c.item_id for c in want], (user, k, mc, ex)
    assert n_differ > 0  # the two choices really are different plans
