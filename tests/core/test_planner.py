"""The one planner, hand-checked: context choice, quotas, hard-search rows, exclusion, merge,
fallback, request limits."""

from __future__ import annotations

import numpy as np
import pytest

from longretriever.core import planner as pl
from longretriever.core.errors import InputError
from longretriever.core.multicontext import Candidate

# events (ts, item, context) given out of order; canonical order is by (ts, item)
EV = [(4, 103, 1), (1, 101, 1), (5, 202, 2), (2, 102, 1), (3, 201, 2)]
TS = np.array([e[0] for e in EV]); IT = np.array([e[1] for e in EV]); CX = np.array([e[2] for e in EV])


def _plan(k=5, hard_k=2, w=3, max_contexts=8, exclude_seen=True, sizes=None, it=IT, ts=TS, cx=CX):
    """The planner on an in-memory history; an item's bundle context is its events' context."""
    cat = pl.Catalog(hard_k, w, pl.ItemContexts(IT, CX), sizes if sizes is not None else {1: 100, 2: 100})
    return pl.plan_query(pl.SequenceHistory(it, ts, cx), k, max_contexts, cat, exclude_seen)


def test_plan_hand_checked():
    # weights: c1 = e^-4/200 + e^-3/200 + e^-1/200 = 2.9603, c2 = e^-2/200 + 1 = 1.9900
    # k=5 shares: c1 2.990, c2 2.010 -> floors 2,2; the spare slot goes to c1 (largest remainder)
    plan = _plan(k=5, hard_k=2, w=3, max_contexts=8)
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

    one = _plan(k=5, hard_k=2, w=3, max_contexts=1)
    assert one.quotas == {1: 5}
    no_excl = _plan(k=5, hard_k=2, w=3, exclude_seen=False)
    assert no_excl.topk == {1: 3, 2: 2} and no_excl.exclude == frozenset()
    capped = _plan(k=5, hard_k=2, w=3, sizes={1: 4, 2: 100})
    assert capped.topk == {1: 4, 2: 4}
    only2 = _plan(k=5, hard_k=2, w=3, sizes={1: 0, 2: 10})
    assert only2.quotas == {2: 5}
    assert _plan(5, 2, 3, it=IT[:0], ts=TS[:0], cx=CX[:0]) is None
    assert _plan(5, 2, 3, sizes={7: 3}) is None


def test_merge_results_excludes_seen_and_keeps_quotas():
    plan = _plan(k=5, hard_k=2, w=3)
    per = {1: [Candidate(103, .99, 1), Candidate(110, .9, 1), Candidate(111, .5, 1), Candidate(112, .1, 1)],
           2: [Candidate(201, .95, 2), Candidate(210, .8, 2), Candidate(211, .7, 2), Candidate(212, .6, 2)],
           3: [Candidate(300, 5.0, 3)]}  # not chosen: ignored
    out = pl.merge_results(plan, per)
    assert [c.item_id for c in out] == [110, 210, 211, 111, 112]


def test_validate_request():
    pl.validate_request(0, 1, 1)
    pl.validate_request(5, 10_000, 64)
    for args in [(-1, 5, 8), (1, 0, 8), (1, 10_001, 8), (1, 5, 0), (1, 5, 65)]:
        with pytest.raises(InputError):
            pl.validate_request(*args)


def test_fallback_candidates():
    pop = {1: [11, 12, 13, 14], 2: [21, 22, 23]}
    out = pl.fallback_candidates(lambda c, n: pop[c][:n], {1: 100, 2: 50, 3: 0}, k=3, max_contexts=8)
    # quotas by size: c1 2, c2 1; top of each context scores 1.0
    assert sorted(c.item_id for c in out) == [11, 12, 21]
    assert pl.fallback_candidates(lambda c, n: pop[c][:n], {1: 100, 2: 50}, k=3, max_contexts=1)[0].context == 1


def test_exact_search_one_tie_rule():
    """Ties at the top-k boundary resolve by raw id, whatever order the partition picks."""
    ids = np.array([50, 40, 30, 20, 10], np.int64)
    vecs = np.ones((5, 2), np.float32)  # every score ties
    got = pl.exact_search(np.ones(2), ids, vecs, 2, 1)
    assert [c.item_id for c in got] == [10, 20]
    es = pl.ExactSearch(ids, np.array([1, 2, 1, 2, 1]), vecs)
    assert [c.item_id for c in es.search_contexts({1: np.ones(2)}, {1: 2})[1]] == [10, 30]
