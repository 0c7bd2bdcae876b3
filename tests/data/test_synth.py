"""The synthetic generator: determinism, shapes, ids, and the planted long-history property."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longretriever.core.contexts import ContextTable
from longretriever.core.errors import ConfigError
from longretriever.data.events import load_dataset
from longretriever.data import synth

START = 1_420_070_400  # 2015-01-01 UTC


@pytest.fixture(scope="module")
def data() -> synth.SynthData:
    return synth.generate_with_truth(users=40, events_per_user=4000, items=5000, contexts=16, seed=11)


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    a_ev, a_it = synth.generate(20, 300, 800, 8, seed=5)
    b_ev, b_it = synth.generate(20, 300, 800, 8, seed=5)
    pd.testing.assert_frame_equal(a_ev, b_ev)
    pd.testing.assert_frame_equal(a_it, b_it)
    c_ev, _ = synth.generate(20, 300, 800, 8, seed=6)
    assert not a_ev["item_id"].equals(c_ev["item_id"])


def test_shapes_ids_and_columns(data: synth.SynthData) -> None:
    ev, it = data.events, data.items
    assert list(ev.columns) == ["user_id", "item_id", "timestamp", "action"]
    assert list(it.columns) == ["item_id", "category"]
    assert len(ev) == 40 * 4000 and len(it) == 5000
    assert (ev.groupby("user_id").size() == 4000).all()
    assert sorted(ev["user_id"].unique().tolist()) == list(range(40))
    ids = it["item_id"].to_numpy()
    np.testing.assert_array_equal(ids, 1000 + 7 * np.arange(5000))  # deliberately not dense
    assert set(ev["item_id"].unique()) <= set(ids.tolist())
    assert sorted(it["category"].unique()) == [f"c{i:02d}" for i in range(16)]
    assert set(ev["action"].astype(str).unique()) == {"click", "like"}
    ts = ev["timestamp"].to_numpy()
    assert ts.min() >= START and ts.max() < 1_600_000_000  # starts 2015, well before today
    assert np.all(np.diff(ev["user_id"].to_numpy()) >= 0)  # user-major rows
    for _, g in ev.groupby("user_id"):
        assert np.all(np.diff(g["timestamp"].to_numpy()) > 0)  # strictly increasing per user


def test_every_user_has_several_planted_interests(data: synth.SynthData) -> None:
    truth, items = data.interests, data.items
    per_user = truth.groupby("user_id").size()
    assert per_user.between(2, 6).all() and len(per_user) == 40
    assert (truth.groupby("user_id")["category"].nunique() == per_user).all()  # distinct contexts
    cat = dict(zip(items["item_id"].tolist(), items["category"].tolist()))
    for row in truth.itertuples():
        assert len(row.items) >= 8 and all(cat[i] == row.category for i in row.items)
    # and it shows in the data: >= 2 contexts each hold >= 10% of every user's events
    table = ContextTable.from_mapping(cat)
    ev = data.events
    ev_ctx = table.context_of(ev["item_id"].to_numpy())
    for u in range(40):
        share = np.bincount(ev_ctx[ev["user_id"].to_numpy() == u]) / 4000
        assert (share >= 0.10).sum() >= 2


def test_dormant_interests_are_revisited_with_the_same_items(data: synth.SynthData) -> None:
    """History = all but the newest 400 events of each user, test = the newest 400. A
    substantial share of test items has a context absent from the newest 200 history events,
    and that context (usually the very item) is found in the older history."""
    table = ContextTable.from_mapping(dict(zip(data.items["item_id"], data.items["category"])))
    T, RECENT = 400, 200
    dormant = found_ctx = found_item = total = 0
    users_with_dormant = 0
    for _, g in data.events.groupby("user_id", sort=True):
        items = g["item_id"].to_numpy()
        ctx = table.context_of(items)
        h_ctx, t_ctx, h_items, t_items = ctx[:-T], ctx[-T:], items[:-T], items[-T:]
        recent = set(h_ctx[-RECENT:].tolist())
        old_ctx, old_items = set(h_ctx[:-RECENT].tolist()), set(h_items[:-RECENT].tolist())
        miss = np.array([c not in recent for c in t_ctx.tolist()])
        total += T
        dormant += int(miss.sum())
        users_with_dormant += bool(miss.sum() >= 20)
        found_ctx += sum(c in old_ctx for c in t_ctx[miss].tolist())
        found_item += sum(i in old_items for i in t_items[miss].tolist())
    assert dormant / total >= 0.15, dormant / total
    assert users_with_dormant >= 10
    assert found_ctx / dormant >= 0.95
    assert found_item / dormant >= 0.4  # same preferred items come back


def test_write_files_and_load_back(tmp_path: Path) -> None:
    out = tmp_path / "syn" / "events.csv"
    ev_path, it_path = synth.write(out, users=5, events_per_user=50, items=200, contexts=4, seed=1)
    assert ev_path == out and it_path == tmp_path / "syn" / "events.items.csv"
    assert ev_path.read_text().splitlines()[0] == "user_id,item_id,timestamp,action"
    assert it_path.read_text().splitlines()[0] == "item_id,category"
    ds = load_dataset(ev_path, it_path)
    assert len(ds.events) == 250 and ds.contexts.num_contexts == 5  # 4 + "unknown"
    assert ds.events.ts_ms.min() >= START * 1000
    assert set(ds.events.actions.tolist()) <= {"click", "like"}
    assert (ds.contexts.context_of(ds.events.item_ids) > 0).all()
    assert synth.items_path_for("a/b.csv") == Path("a/b.items.csv")


def test_small_and_degenerate_arguments() -> None:
    ev, it = synth.generate(3, 1, 5, 1, seed=0)  # one context: interests capped at 1
    assert len(ev) == 3 and len(it) == 5
    with pytest.raises(ConfigError):
        synth.generate(1, 10, 3, 5, seed=0)  # fewer items than contexts
    with pytest.raises(ConfigError):
        synth.generate(0, 10, 10, 2, seed=0)
