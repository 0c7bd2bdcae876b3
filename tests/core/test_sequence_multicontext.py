"""Hand-checked cases for the pure functions every path shares: canonical order, hard search,
recent window, context weights, context choice, quotas and the quota merge."""

from __future__ import annotations

import math

import numpy as np

from longretriever.core.multicontext import (Candidate, allocate_quotas, choose_contexts, context_weights,
                                        merge)
from longretriever.core.sequence import (canonical_order, context_positions, hard_search,
                                    hard_search_positions, recent_window)


def test_canonical_order_is_ts_then_item():
    ts = np.array([5, 3, 5, 3])
    items = np.array([9, 7, 1, 8])
    assert canonical_order(ts, items).tolist() == [1, 3, 2, 0]


def test_hard_search_newest_k_of_context_before_end():
    #           pos: 0  1  2  3  4  5  6
    ctx = np.array([1, 2, 1, 1, 3, 1, 2])
    assert hard_search(ctx, 1, 2).tolist() == [3, 5]
    assert hard_search(ctx, 1, 10).tolist() == [0, 2, 3, 5]
    assert hard_search(ctx, 1, 2, end=3).tolist() == [0, 2]  # strictly before position 3
    assert hard_search(ctx, 1, 2, end=0).tolist() == []
    assert hard_search(ctx, 4, 5).tolist() == []
    assert hard_search(ctx, 2, 0).tolist() == []
    pos = context_positions(ctx)
    assert {c: p.tolist() for c, p in pos.items()} == {1: [0, 2, 3, 5], 2: [1, 6], 3: [4]}
    assert hard_search_positions(pos[2], 1, end=6).tolist() == [1]


def test_recent_window():
    assert recent_window(10, 3).tolist() == [7, 8, 9]
    assert recent_window(10, 3, end=2).tolist() == [0, 1]
    assert recent_window(2, 5).tolist() == [0, 1]


def test_context_weights_decay_from_the_newest_event():
    w = context_weights(np.array([2, 1, 2]), tau=1.0)  # oldest first: ages 2, 1, 0
    assert math.isclose(w[2], 1 + math.exp(-2))
    assert math.isclose(w[1], math.exp(-1))
    assert context_weights(np.array([], np.int64)) == {}


def test_choose_contexts_heaviest_first_ties_by_id_and_allowed():
    w = {3: 1.0, 1: 2.0, 2: 1.0, 4: 0.0}
    assert choose_contexts(w, 3) == [(1, 2.0), (2, 1.0), (3, 1.0)]
    assert choose_contexts(w, 2, allowed={2, 3}) == [(2, 1.0), (3, 1.0)]
    assert choose_contexts(w, 0) == []


def test_allocate_quotas_largest_remainder():
    # shares 10 * (3, 1, 1) / 5 = 6, 2, 2
    assert allocate_quotas([(1, 3.0), (2, 1.0), (3, 1.0)], 10) == {1: 6, 2: 2, 3: 2}
    # shares 10/3 each: floors 3, 3, 3, the one spare slot goes to the first in order
    assert allocate_quotas([(5, 1.0), (6, 1.0), (7, 1.0)], 10) == {5: 4, 6: 3, 7: 3}
    assert sum(allocate_quotas([(1, 0.7), (2, 0.2), (3, 0.1)], 7).values()) == 7
    assert allocate_quotas([], 5) == {}


def test_merge_respects_quotas_then_fills_by_score():
    per = {
        1: [Candidate(10, 0.9, 1), Candidate(11, 0.8, 1), Candidate(12, 0.7, 1)],
        2: [Candidate(20, 0.5, 2), Candidate(21, 0.95, 2)],
    }
    # quota 1 each: best of ctx 1 (10) and best of ctx 2 (21); then one spare slot by score: 11
    out = merge(per, {1: 1, 2: 1}, 3)
    assert [c.item_id for c in out] == [21, 10, 11]
    # excluded items are skipped and their slot goes to the next of the same context
    out = merge(per, {1: 2, 2: 1}, 3, exclude={10})
    assert [c.item_id for c in out] == [21, 11, 12]
    # a context that cannot fill its quota gives its slots away
    out = merge(per, {1: 1, 2: 3}, 4)
    assert [c.item_id for c in out] == [21, 10, 11, 20]
    # ties on score break by item id
    tie = {1: [Candidate(5, 0.5, 1), Candidate(4, 0.5, 1)]}
    assert [c.item_id for c in merge(tie, {1: 2}, 2)] == [4, 5]
