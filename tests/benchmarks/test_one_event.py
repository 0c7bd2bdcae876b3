"""The one-event write bench: every user gets exactly one event per batch, all of them land in
the state through the worker's own decode + stage and the commit."""

from __future__ import annotations

import numpy as np

from longretriever.benchmarks.one_event import one_event_write
from longretriever.core.contexts import ContextTable
from longretriever.stream.state import StateStore


def test_one_event_write_applies_one_event_per_user_and_batch(tmp_path):
    ctx = ContextTable.from_mapping({i: f"c{i % 4}" for i in range(500)})
    store = StateStore(tmp_path / "s", ctx)
    users = np.arange(0, 60, 3, dtype=np.int64)
    u = np.repeat(users, 40)
    store.apply(u, np.arange(u.size) % 500, 1_700_000_000_000 + np.arange(u.size), {0: 1})
    before = {int(x): sum(store.context_counts(int(x)).values()) for x in users}
    got = one_event_write(store, users, np.arange(500), batches=3)
    assert got["one_event_applied"] == 3 * users.size
    assert all(sum(store.context_counts(int(x)).values()) == before[int(x)] + 3 for x in users)
    assert got["one_event_stage_us"] > 0 and got["one_event_commit_us"] > 0
    store.close()
