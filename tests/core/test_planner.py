"""The one planner, hand-checked: context choice, quotas, hard-search rows, exclusion, merge,
fallback, request limits."""

from __future__ import annotations

import numpy as np
import pytest

from longretriever.core import planner as pl
from longretriever.core.errors import InputError
from longretriever.core.multicontext import Candidate
from longretriever.core.ranking import ExactSearch

# events (ts, item, context) given out of order; canonical order is by (ts, item)
EV = [(4, 103, 1), (1, 101, 1), (5, 202, 2), (2, 102, 1), (3, 201, 2)]
TS = np.array([e[0] for e in EV]); IT = np.array([e[1] for e in EV]); CX = np.array([e[2] for e in EV])


def _plan(k=5, hard_k=2, w=3, max_contexts=8, exclude_seen=True, sizes=None, it=IT, ts=TS, cx=CX):
    """The planner on an in-memory history; an item's bundle context is its events' context."""
    cat = pl.Catalog(hard_k, w, pl.ItemContexts(IT, CX), sizes if sizes is not None else {1: 100, 2: 100})
    return pl.plan_query(pl.SequenceHistory(it, ts, cx), k, max_contexts, cat, exclude_seen)


def test_plan_hand_checked():
    # weights: c1 = e^-4/200 + e^-3/200 + e^-1/200 = 2.9603, c2 = e^-2/200 + 1 = 1.9900
    # D'Hondt slots for k=5: c1 (2.96), c2 (1.99), c1 (1.48), c2 (0.995), c1 (0.987)
    plan = _plan(k=5, hard_k=2, w=3, max_contexts=8)
    assert [c.context for c in plan.contexts] == [1, 2]
    assert plan.slots == {1: 3, 2: 2}
    assert plan.contexts[0].weight == pytest.approx(np.exp(-4 / 200) + np.exp(-3 / 200) + np.exp(-1 / 200))
    assert plan.contexts[0].ctx_items.tolist() == [102, 103]  # newest 2 of context 1, oldest first
    assert plan.contexts[1].ctx_items.tolist() == [201, 202]
    assert plan.recent_items.tolist() == [201, 103, 202]  # newest 3 overall
    assert plan.exclude_seen
    ctx_items, recent, ctxs = plan.encoder_rows()
    assert ctxs == [1, 2] and all(r.tolist() == [201, 103, 202] for r in recent)

    one = _plan(k=5, hard_k=2, w=3, max_contexts=1)
    assert one.slots == {1: 5}
    assert not _plan(k=5, hard_k=2, w=3, exclude_seen=False).exclude_seen
    only2 = _plan(k=5, hard_k=2, w=3, sizes={1: 0, 2: 10})
    assert only2.slots == {2: 5}
    assert _plan(5, 2, 3, it=IT[:0], ts=TS[:0], cx=CX[:0]) is None
    assert _plan(5, 2, 3, sizes={7: 3}) is None


class ListSearch:
    """A Searcher over fixed ranked lists; records the depth asked per call."""

    def __init__(self, lists):
        self.lists, self.calls = lists, []

    def search_contexts(self, vectors, topk, timeout=None):
        self.calls.append(dict(topk))
        return {c: self.lists.get(c, [])[:n] for c, n in topk.items()}


PER = {1: [Candidate(103, .99, 1), Candidate(110, .9, 1), Candidate(111, .5, 1), Candidate(112, .1, 1)],
       2: [Candidate(201, .95, 2), Candidate(210, .8, 2), Candidate(211, .7, 2), Candidate(212, .6, 2)],
       3: [Candidate(300, 5.0, 3)]}  # not chosen: never asked


def test_answer_excludes_seen_and_fills_slots_in_order():
    plan = _plan(k=5, hard_k=2, w=3)
    history = pl.SequenceHistory(IT, TS, CX)
    vecs = {1: np.ones(2), 2: np.ones(2)}
    search = ListSearch(PER)
    out = pl.answer(plan, vecs, search, history, {1: 4, 2: 4, 3: 1})
    # seen 103 and 201 are removed; slots c1, c2, c1, c2, c1
    assert [c.item_id for c in out] == [110, 210, 111, 211, 112]
    assert all(3 not in call for call in search.calls)
    # without exclusion the seen items stay
    raw = pl.answer(_plan(k=5, hard_k=2, w=3, exclude_seen=False), vecs, ListSearch(PER), history, {1: 4, 2: 4})
    assert [c.item_id for c in raw] == [103, 201, 110, 210, 111]
    # prefix-consistent: the answer for 3 is the first 3 of the answer for 5
    three = pl.answer(_plan(k=3, hard_k=2, w=3), vecs, ListSearch(PER), history, {1: 4, 2: 4})
    assert [c.item_id for c in three] == [110, 210, 111]


def test_answer_gives_the_slots_of_an_exhausted_context_to_the_others():
    history = pl.SequenceHistory(IT, TS, CX)
    lists = {1: [Candidate(103, .99, 1), Candidate(110, .9, 1)], 2: PER[2]}
    out = pl.answer(_plan(k=5, hard_k=2, w=3), {1: np.ones(2), 2: np.ones(2)}, ListSearch(lists), history,
                    {1: 2, 2: 4})
    # context 1 has one unseen item: it keeps its first slot, c2 takes the rest
    assert [c.item_id for c in out] == [110, 210, 211, 212]  # c2 has only 3 unseen items: 4 in all


def test_fetch_streams_asks_deeper_while_exclusion_leaves_a_stream_short():
    ids = np.arange(1000, 1100)
    history = pl.SequenceHistory(ids[:40], np.arange(40), np.ones(40, np.int64))  # the best 40 are seen
    lists = {1: [Candidate(int(i), 1.0 - r / 100, 1) for r, i in enumerate(ids)]}
    search = ListSearch(lists)
    streams, complete = pl.fetch_streams(search, history, {1: np.ones(2)}, {1: 5}, {1: 100})
    assert [c.item_id for c in streams[1][:5]] == list(range(1040, 1045)) and not complete[1]
    # 5 + margin 8; all 13 seen, so one re-ask 5x as deep (doubling would take 26, then 52)
    assert [call[1] for call in search.calls] == [13, 65]
    streams, complete = pl.fetch_streams(ListSearch(lists), history, {1: np.ones(2)}, {1: 80}, {1: 100})
    assert len(streams[1]) == 60 and complete[1]  # only 60 unseen items exist


class CountingExact(ExactSearch):
    """ExactSearch recording its ``search_unseen`` calls."""

    unseen_calls: list

    def search_unseen(self, context, vector, n, seen_mask, depth=0):
        self.unseen_calls.append((context, n))
        return super().search_unseen(context, vector, n, seen_mask, depth)


def test_short_contexts_go_to_the_unseen_search_with_the_same_answer():
    """The first ask goes to the primary searcher (Milvus online); a context exclusion left
    short is ranked over its unseen items by ``deep`` in one call; the streams equal those of
    re-asking deeper (the offline reference's way)."""
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(1000, 1300))
    ctx = np.where(np.arange(300) < 200, 1, 2)
    vecs = rng.normal(size=(300, 4)).astype(np.float32)
    q = {1: rng.normal(size=4).astype(np.float32), 2: rng.normal(size=4).astype(np.float32)}
    exact = ExactSearch(ids, ctx, vecs)
    best1 = [c.item_id for c in exact.search(1, q[1], 200)]
    seen = np.array(best1[:150] + [c.item_id for c in exact.search(2, q[2], 100)][:3])  # most of c1's best
    history = pl.SequenceHistory(seen, np.arange(seen.size), np.ones(seen.size, np.int64))
    need, sizes = {1: 30, 2: 5}, {1: 200, 2: 100}
    want, want_done = pl.fetch_streams(exact, history, q, need, sizes)
    deep = CountingExact(ids, ctx, vecs)
    deep.unseen_calls = []
    primary = CountingExact(ids, ctx, vecs)
    got, done = pl.fetch_streams(primary, history, q, need, sizes, deep=deep)
    assert [c.item_id for c in got[1]] == [c.item_id for c in want[1]][:30] == best1[150:180]
    assert got[2] == want[2] and done == {1: False, 2: False}  # 30 asked, 30 returned: there may be more
    assert deep.unseen_calls == [(1, 30)]  # context 2 was not short: answered by the first ask
    # asking for more than the unseen items left: all of them, and the stream is complete
    got, done = pl.fetch_streams(primary, history, q, {1: 80}, sizes, deep=deep)
    assert [c.item_id for c in got[1]] == best1[150:] and done[1]
    # nothing short: the deep searcher is never asked
    deep.unseen_calls = []
    pl.fetch_streams(primary, pl.SequenceHistory(ids[:0], ids[:0], ids[:0]), q, need, sizes, deep=deep)
    assert deep.unseen_calls == []


def test_validate_request():
    pl.validate_request(0, 1, 1)
    pl.validate_request(5, 10_000, 64)
    for args in [(-1, 5, 8), (1, 0, 8), (1, 10_001, 8), (1, 5, 0), (1, 5, 65)]:
        with pytest.raises(InputError):
            pl.validate_request(*args)


def test_fallback_candidates():
    pop = {1: [11, 12, 13, 14], 2: [21, 22, 23]}
    out = pl.fallback_candidates(lambda c, n: pop[c][:n], {1: 100, 2: 50, 3: 0}, k=3, max_contexts=8)
    # weights by size 100, 50: slots c1 (100), then c1 (50) before c2 (50) on the tie, then c2
    assert [c.item_id for c in out] == [11, 12, 21] and out[0].score == out[2].score == 1.0
    assert pl.fallback_candidates(lambda c, n: pop[c][:n], {1: 100, 2: 50}, k=3, max_contexts=1)[0].context == 1


def test_adaptive_contexts_drop_contexts_not_worth_a_search():
    from longretriever.core.multicontext import allocate, slot_counts
    from longretriever.core.planner import worth_a_search

    chosen = ((1, 0.5), (2, 0.3), (3, 0.15), (4, 0.05))
    assert worth_a_search(chosen, 20, 0) == chosen  # off
    # slots at k=20: {1: 10, 2: 6, 3: 3, 4: 1}; without 4: {1: 11, 2: 6, 3: 3}
    kept = worth_a_search(chosen, 20, 3)
    slots = slot_counts(allocate(kept, 20))
    assert [c for c, _ in kept] == [1, 2, 3] and min(slots.values()) >= 3 and sum(slots.values()) == 20
    assert [c for c, _ in worth_a_search(chosen, 20, 4)] == [1, 2]
    assert worth_a_search(chosen, 20, 100) == ((1, 0.5),)  # the heaviest always stays


def test_adaptive_contexts_keep_online_equal_to_offline():
    from longretriever.benchmarks.synthetic import MemoryState, random_histories, synthetic_bundle
    from longretriever.core.planner import retrieve_offline
    from longretriever.retriever.service import RetrieverService

    b = synthetic_bundle(2000, n_contexts=8, dim=16, seed=3)
    state = MemoryState.for_bundle(b)
    random_histories(b, state, users=25, events=120)
    full = RetrieverService(b, ExactSearch.of(b), state)
    adaptive = RetrieverService(b, ExactSearch.of(b), state, min_slots=10)
    fewer = 0
    for u in range(25):
        s = state.sequence(u)
        got = adaptive.retrieve(u, 60, 8, True)
        ref = retrieve_offline(b, s.items, s.ts, s.contexts, 60, 8, True, min_slots=10)
        assert [c.item_id for c in got.candidates] == [c.item_id for c in ref]
        assert len(got.candidates) == 60
        n_full = len({c.context for c in full.retrieve(u, 60, 8, True).candidates})
        fewer += len({c.context for c in got.candidates}) < n_full
    assert fewer > 0  # the rule did drop contexts for some users
