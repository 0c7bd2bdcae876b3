"""The write path's canonical order: (context, ts, item, arrival), whichever way it is found."""

import numpy as np
import pytest

from longretriever.stream.writer import _canonical


@pytest.mark.parametrize("in_time_order", [True, False])
def test_canonical_order_equals_the_four_key_lexsort(in_time_order):
    rng = np.random.default_rng(int(in_time_order))
    for _ in range(2000):
        n = int(rng.integers(1, 60))
        ctx, items = rng.integers(0, 3, n), rng.integers(0, 5, n)
        ts = rng.integers(0, 20, n)
        if in_time_order:
            ts = np.sort(ts)
        want = np.lexsort((np.arange(n), items, ts, ctx))
        assert _canonical(ctx, ts, items).tolist() == want.tolist()
