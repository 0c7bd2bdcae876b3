"""StateHistory answers seen-item checks once per query: a deeper re-ask re-checks its first
hits without asking the state again, and every answer equals the state's own."""

from __future__ import annotations

import numpy as np

from longretriever.core.contexts import ContextTable
from longretriever.retriever.history import StateHistory
from longretriever.stream.state import StateStore


class CountingState:
    def __init__(self, state):
        self.state, self.asked = state, []

    def seen_mask(self, user, items):
        self.asked.append(np.asarray(items).copy())
        return self.state.seen_mask(user, items)


def test_seen_answers_are_kept_for_the_query(tmp_path):
    ctx = ContextTable.from_mapping({i: f"c{i % 4}" for i in range(500)})
    s = StateStore(tmp_path / "s", ctx)
    rng = np.random.default_rng(2)
    items = rng.integers(0, 500, 300)
    s.apply(np.full(300, 7), items, 1_600_000_000_000 + np.arange(300) * 1000, {0: 0})
    counting = CountingState(s)
    h = StateHistory(counting, 7)
    first = rng.integers(0, 600, 50)
    deeper = np.concatenate([first, rng.integers(0, 600, 80)])  # a deeper list: the first hits again
    with s.reading():
        a = h.seen_mask(first)
        b = h.seen_mask(deeper)
        assert np.array_equal(a, s.seen_mask(7, first))
        assert np.array_equal(b, s.seen_mask(7, deeper))
    assert a.any() and (~b).any()
    # the second call asked the state only for ids it had not answered yet
    assert len(counting.asked) == 2
    assert not np.isin(counting.asked[1], first).any()
    assert set(counting.asked[1].tolist()) == set(deeper.tolist()) - set(first.tolist())
