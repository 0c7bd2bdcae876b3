"""The one exact ranking (core/ranking.py): the tie rule, the in-memory exact search, the
unseen search's check depth and the exclusion depth estimate."""

from __future__ import annotations

import numpy as np

from longretriever.core.ranking import ExactSearch, deeper, exact_search


def test_exact_search_one_tie_rule():
    """Ties at the top-k boundary resolve by raw id, whatever order the partition picks."""
    ids = np.array([50, 40, 30, 20, 10], np.int64)
    vecs = np.ones((5, 2), np.float32)  # every score ties
    got = exact_search(np.ones(2), ids, vecs, 2, 1)
    assert [c.item_id for c in got] == [10, 20]
    es = ExactSearch(ids, np.array([1, 2, 1, 2, 1]), vecs)
    assert [c.item_id for c in es.search_contexts({1: np.ones(2)}, {1: 2})[1]] == [10, 30]


def test_search_unseen_checks_as_deep_as_needed_and_equals_filtering_the_full_ranking():
    rng = np.random.default_rng(1)
    ids = np.arange(5000, 15000)
    vecs = rng.normal(size=(ids.size, 8)).astype(np.float32)
    q = rng.normal(size=8).astype(np.float32)
    es = ExactSearch(ids, np.zeros(ids.size, np.int64), vecs)
    full = [c.item_id for c in es.search(0, q, ids.size)]
    for seen_n in (0, 300, 9_990, 10_000):  # none, the best 300, all but 10, everything seen
        seen = np.array(full[:seen_n], np.int64)
        checked: list[int] = []

        def mask(x, seen=seen):
            checked.append(len(x))
            return np.isin(x, seen)

        got = [c.item_id for c in es.search_unseen(0, q, 50, mask)]
        assert got == full[seen_n:seen_n + 50]
        if seen_n <= 300:  # the checks follow the depth of the unseen items, not the 10k
            assert sum(checked) < 2_000
    # a depth hint is only where the checks start
    got = es.search_unseen(0, q, 50, lambda x: np.isin(x, np.array(full[:300])), depth=10_000)
    assert [c.item_id for c in got] == full[300:350]


def test_deeper_follows_the_unseen_share():
    assert deeper(asked=100, returned=100, unseen=10, need=30) == 100 + 250  # 20 short at 10 %, x1.25
    assert deeper(asked=100, returned=100, unseen=90, need=100) == 200  # never less than double
    assert deeper(asked=13, returned=13, unseen=0, need=5) == 65  # nothing unseen yet: 5x
    # the estimate is enough when the unseen share holds: 20 short at 10 % needs 200 more
    asked, need, share = 100, 30, 0.1
    more = deeper(asked, 100, int(asked * share), need) - asked
    assert more * share >= need - asked * share
