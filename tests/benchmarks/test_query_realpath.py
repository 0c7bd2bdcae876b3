"""The real-path query bench's data: the bundle is trained on every group's events, so every
item of every history is in the bundle (and Milvus), in a context."""

from __future__ import annotations

import numpy as np
import pandas as pd

from longretriever.benchmarks.query_realpath import USER_BLOCK, _histories


def test_training_events_cover_every_history(tmp_path):
    log, train_csv, items_csv = _histories(tmp_path, [20, 300], users=3, items=5_000, contexts=4)
    train = pd.read_csv(train_csv)
    # every event of every group, user ids offset by group as in the merged log
    assert len(train) == len(log) == 3 * 20 + 3 * 300
    assert set(train["item_id"]) == set(log.item_ids.tolist())
    assert sorted(set(train["user_id"])) == sorted(set(log.user_ids.tolist()))
    assert {int(u) // USER_BLOCK for u in log.user_ids} == {0, 1}
    # the longest group's items are not a subset of the shortest group's (what went wrong before)
    short = set(log.item_ids[log.user_ids < USER_BLOCK].tolist())
    assert len(set(log.item_ids.tolist()) - short) > 0
    assert np.all(np.diff(log.ts_ms) >= 0)
    assert set(pd.read_csv(items_csv)["item_id"]) >= set(train["item_id"])
