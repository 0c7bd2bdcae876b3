"""The real-path query bench's data: the bundle is trained on every group's events, so every
item of every history is in the bundle (and Milvus), in a context; the longest group's users
also appear cut to their newest events (the like-for-like pairs)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from longretriever.benchmarks.query_realpath import USER_BLOCK, _histories, cut_block


def test_training_events_cover_every_history(tmp_path):
    log, train_csv, items_csv = _histories(tmp_path, [20, 300], users=3, items=5_000, contexts=4)
    train = pd.read_csv(train_csv)
    # every event of every group, user ids offset by group as in the merged log, and the cut users
    assert len(train) == len(log) == 3 * 20 + 3 * 300 + 3 * 20
    assert set(train["item_id"]) == set(log.item_ids.tolist())
    assert sorted(set(train["user_id"])) == sorted(set(log.user_ids.tolist()))
    assert {int(u) // USER_BLOCK for u in log.user_ids} == {0, 1, 2} and cut_block([20, 300]) == 2 * USER_BLOCK
    # the longest group's items are not a subset of the shortest group's (what went wrong before)
    short = set(log.item_ids[log.user_ids < USER_BLOCK].tolist())
    assert len(set(log.item_ids.tolist()) - short) > 0
    assert np.all(np.diff(log.ts_ms) >= 0)
    assert set(pd.read_csv(items_csv)["item_id"]) >= set(train["item_id"])


def test_cut_users_hold_the_newest_events_of_the_longest_users(tmp_path):
    log, _, _ = _histories(tmp_path, [20, 300], users=3, items=5_000, contexts=4)
    users, items, ts = log.user_ids, log.item_ids, log.ts_ms
    for u in range(3):
        full = sorted(zip(ts[users == USER_BLOCK + u].tolist(), items[users == USER_BLOCK + u].tolist()))
        cut = sorted(zip(ts[users == 2 * USER_BLOCK + u].tolist(), items[users == 2 * USER_BLOCK + u].tolist()))
        assert len(full) == 300 and len(cut) == 20
        assert cut == full[-20:]  # the newest 20 in canonical (ts, item) order
