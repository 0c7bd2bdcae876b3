"""ContextTable.context_of: the dense id -> context array (small non-negative ids) answers
exactly as the binary search over the sorted table, unknown and out-of-range ids included."""

from __future__ import annotations

import numpy as np

from longretriever.core.contexts import UNKNOWN_CONTEXT, ContextTable


def _searched(t: ContextTable) -> ContextTable:
    ref = ContextTable(t.names, t.item_ids, t.item_contexts)
    object.__setattr__(ref, "_dense", None)  # force the binary search
    return ref


def test_dense_lookup_equals_the_binary_search():
    rng = np.random.default_rng(0)
    ids = 1000 + 7 * np.arange(5000)
    t = ContextTable.from_mapping({int(i): f"c{rng.integers(20)}" for i in ids})
    assert t._dense is not None
    q = np.concatenate([rng.choice(ids, 3000), rng.integers(-10, 40_000, 3000), [-(2**62), 2**62, 0, 1001]])
    got = t.context_of(q)
    assert np.array_equal(got, _searched(t).context_of(q)) and got.dtype == np.int32
    assert (got[-4:-1] == UNKNOWN_CONTEXT).all() and got[-1] == UNKNOWN_CONTEXT  # 1001 is not an item
    assert (t.context_of(ids) > 0).all()


def test_sparse_or_negative_ids_use_the_binary_search():
    sparse = ContextTable.from_mapping({10**12 + 3: "a", 5: "b"})
    negative = ContextTable.from_mapping({-4: "a", 5: "b"})
    assert sparse._dense is None and negative._dense is None
    assert sparse.context_of(np.array([10**12 + 3, 5, 6])).tolist() == [1, 2, 0]
    assert negative.context_of(np.array([-4, 5, 6])).tolist() == [1, 2, 0]
