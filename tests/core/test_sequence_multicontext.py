"""Hand-checked cases for the pure functions every path shares: canonical order, hard search,
recent window, context weights, context choice, slot allocation and the slot merge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from longretriever.core.multicontext import (Candidate, allocate, choose_contexts, context_weights, emit,
                                             slot_counts)
from longretriever.core.sequence import (canonical_order, context_positions, hard_search,
                                    hard_search_positions, recent_window)


def test_canonical_order_is_ts_then_item():
    ts = np.array([5, 3, 5, 3])
    items = np.array([9, 7, 1, 8])
    assert canonical_order(ts, items).tolist() == [1, 3, 2, 0]


def test_canonical_order_equals_both_key_sort_with_and_without_ties():
    # ts-only sorting is used when no two events share a ts; both keys otherwise
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(0, 60))
        ts = rng.integers(0, 10 if trial % 2 else 10**9, n)
        items = rng.integers(0, 5, n)
        assert canonical_order(ts, items).tolist() == np.lexsort((items, ts)).tolist()


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


def test_allocate_dhondt_in_answer_order():
    # weights 3, 1, 1: priorities 3, 1.5, 1 (ctx 1) and 1, 0.5 (ctx 2, 3); ties by chosen order
    chosen = [(1, 3.0), (2, 1.0), (3, 1.0)]
    assert allocate(chosen, 5) == [1, 1, 1, 2, 3]
    assert slot_counts(allocate(chosen, 10)) == {1: 6, 2: 2, 3: 2}  # the weight shares, exactly
    assert slot_counts(allocate([(5, 1.0), (6, 1.0), (7, 1.0)], 10)) == {5: 4, 6: 3, 7: 3}
    assert allocate([], 5) == [] and allocate(chosen, 0) == []
    # prefix-consistent: the slots for k are the first k slots for any larger k
    w = [(1, 0.61), (2, 0.27), (3, 0.09), (4, 0.03)]
    longest = allocate(w, 300)
    assert all(allocate(w, k) == longest[:k] for k in range(1, 300, 7))
    # a capped context gives its remaining slots to the others, in the same order rule
    assert allocate(chosen, 5, caps={1: 1}) == [1, 2, 3, 2, 3]
    assert allocate(chosen, 5, caps={1: 0, 2: 1}) == [2, 3, 3, 3, 3]
    assert allocate([(1, 1.0)], 5, caps={1: 2}) == [1, 1]  # nothing left to fill


def test_emit_fills_slots_from_streams_in_order():
    streams = {1: [Candidate(10, 0.9, 1), Candidate(11, 0.8, 1), Candidate(12, 0.7, 1)],
               2: [Candidate(21, 0.95, 2), Candidate(20, 0.5, 2)]}
    assert [c.item_id for c in emit([1, 2, 1, 1, 2], streams)] == [10, 21, 11, 12, 20]
    assert [c.item_id for c in emit([2, 2, 2], streams)] == [21, 20]  # a short stream leaves slots empty
    dup = {1: [Candidate(5, 0.5, 1)], 2: [Candidate(5, 0.4, 2), Candidate(6, 0.3, 2)]}
    assert [c.item_id for c in emit([1, 2], dup)] == [5, 6]  # an item id appears once


def _allocate_slot_by_slot(chosen, k, caps=None):
    """The definition, one slot at a time (a heap of the next quotient of each context)."""
    import heapq

    caps = caps or {}
    heap = [(-float(w), i, int(c)) for i, (c, w) in enumerate(chosen) if w > 0 and caps.get(c) != 0]
    heapq.heapify(heap)
    taken: dict[int, int] = {}
    out: list[int] = []
    while heap and len(out) < k:
        _, i, c = heapq.heappop(heap)
        taken[c] = n = taken.get(c, 0) + 1
        out.append(c)
        if caps.get(c) is None or n < caps[c]:
            heapq.heappush(heap, (-float(chosen[i][1]) / (n + 1), i, c))
    return out


def test_allocate_equals_the_slot_by_slot_definition():
    """allocate ranks every reachable quotient in one sort; it must give the slot-by-slot
    order exactly, ties (equal weights, equal quotients across contexts), caps and
    non-positive weights included."""
    rng = np.random.default_rng(5)
    pool = [1.0, 2.0, 0.5, 3.0, 0.0, -1.0, 1 / 3, 2 / 3]
    for _ in range(3000):
        cs = rng.choice(30, rng.integers(0, 9), replace=False).tolist()
        ws = [float(rng.choice(pool)) if rng.random() < 0.6 else float(rng.random() * 5) for _ in cs]
        caps = {c: [None, 0, 1, 2, 5, 100][rng.integers(6)] for c in cs if rng.random() < 0.5}
        k = int(rng.integers(0, 60))
        chosen = list(zip(cs, ws))
        assert allocate(chosen, k, caps) == _allocate_slot_by_slot(chosen, k, caps), (chosen, k, caps)
        # without caps only the quotients that can rank are generated (a divisor bound)
        big = int(rng.integers(0, 400))
        assert allocate(chosen, big) == _allocate_slot_by_slot(chosen, big), (chosen, big)
        skewed = [(c, w * 10.0 ** int(rng.integers(-6, 7))) for c, w in chosen]
        assert allocate(skewed, big) == _allocate_slot_by_slot(skewed, big), (skewed, big)


def test_candidates_from_arrays_are_plain_immutable_values():
    from longretriever.core.multicontext import candidates

    got = candidates(np.array([7, 3], np.int32), np.array([0.5, 0.25], np.float32), np.int64(4))
    assert got == [Candidate(7, 0.5, 4), Candidate(3, 0.25, 4)]
    # Python scalars, not numpy ones (they reach protobuf and JSON)
    assert [type(v) for v in got[0]] == [int, float, int]
    assert got[0].item_id == 7 and got[0].score == 0.5 and got[0].context == 4
    with pytest.raises(AttributeError):
        got[0].score = 1.0  # type: ignore[misc]
    assert len({got[0], Candidate(7, 0.5, 4)}) == 1  # hashable, equal by value
