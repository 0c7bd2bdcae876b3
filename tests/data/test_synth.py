"""The synthetic generator: determinism, shapes, no re-consumption, dormant interests that
return, and the oracle (the generator's own probabilities) as a ceiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longretriever.core.contexts import ContextTable
from longretriever.core.errors import ConfigError
from longretriever.data import synth
from longretriever.data.events import load_dataset

START = 1_420_070_400  # 2015-01-01 UTC


@pytest.fixture(scope="module")
def data() -> synth.SynthData:
    return synth.generate_with_truth(users=30, events_per_user=1500, items=6000, contexts=16, seed=11)


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
    assert len(ev) == 30 * 1500 and len(it) == 6000
    assert (ev.groupby("user_id").size() == 1500).all()
    ids = it["item_id"].to_numpy()
    np.testing.assert_array_equal(ids, 1000 + 7 * np.arange(6000))  # deliberately not dense
    assert set(ev["item_id"].unique()) <= set(ids.tolist())
    assert sorted(it["category"].unique()) == [f"c{i:02d}" for i in range(16)]
    assert set(ev["action"].astype(str).unique()) == {"click", "like"}
    ts = ev["timestamp"].to_numpy()
    assert ts.min() >= START and ts.max() < 1_600_000_000  # starts 2015, well before today
    for _, g in ev.groupby("user_id"):
        assert np.all(np.diff(g["timestamp"].to_numpy()) > 0)  # strictly increasing per user


def test_no_re_consumption(data: synth.SynthData) -> None:
    per_user = data.events.groupby("user_id")["item_id"]
    assert (per_user.nunique() == per_user.size()).all()


def test_interests_are_several_and_dormant_ones_return(data: synth.SynthData) -> None:
    """Several categories carry a real share of every user's events; and a substantial share
    of each user's newest 300 events lies in a category absent from the 200 events before
    them but present in the older history (an interest that came back)."""
    table = ContextTable.from_mapping(dict(zip(data.items["item_id"], data.items["category"])))
    T, RECENT = 300, 200
    dormant = found = total = 0
    for _, g in data.events.groupby("user_id", sort=True):
        ctx = table.context_of(g["item_id"].to_numpy())
        assert (np.bincount(ctx) / ctx.size >= 0.08).sum() >= 2
        h, t = ctx[:-T], ctx[-T:]
        recent, old = set(h[-RECENT:].tolist()), set(h[:-RECENT].tolist())
        miss = [c for c in t.tolist() if c not in recent]
        total += T
        dormant += len(miss)
        found += sum(c in old for c in miss)
    assert dormant / total >= 0.10, dormant / total
    assert found / dormant >= 0.8  # the rest: exploration, and interests that moved on


def test_oracle_is_a_distribution_over_unconsumed_items(data: synth.SynthData) -> None:
    tr = data.truth
    for u, t in [(0, 1), (3, 1200), (29, 1499)]:
        p = synth.oracle_scores(tr, u, t)
        base = int(tr.ev_offset[u])
        consumed = tr.ev_item[base:base + t]
        assert p.shape == (6000,) and np.all(p >= 0)
        assert p[consumed].sum() == 0
        assert abs(p.sum() - 1.0) < 1e-6
    with pytest.raises(ValueError):
        synth.oracle_scores(tr, 0, 0)


def test_oracle_ranks_the_next_item_far_better_than_popularity(data: synth.SynthData) -> None:
    tr = data.truth
    pop = np.exp(tr.item_bias)
    hits_oracle = hits_pop = 0
    for u in range(30):
        base, end = int(tr.ev_offset[u]), int(tr.ev_offset[u + 1])
        t = end - base - 1
        target = int(tr.ev_item[end - 1])
        seen = tr.ev_item[base:end - 1]
        for scores, bump in ((synth.oracle_scores(tr, u, t), "o"), (pop.copy(), "p")):
            scores[seen] = -1.0
            rank = int((scores > scores[target]).sum())
            if rank < 100:
                hits_oracle += bump == "o"
                hits_pop += bump == "p"
    assert hits_oracle >= 15 and hits_oracle >= 3 * max(1, hits_pop), (hits_oracle, hits_pop)


def test_history_lengths_spread_log_uniformly() -> None:
    ev, _ = synth.generate(150, 3000, 4000, 8, seed=2, min_events=100)
    n = ev.groupby("user_id").size()
    assert n.min() >= 100 and n.max() <= 3000
    assert (n < 300).sum() >= 15 and (n > 1500).sum() >= 15  # both ends are populated


def test_write_files_truth_and_load_back(tmp_path: Path) -> None:
    out = tmp_path / "syn" / "events.csv"
    ev_path, it_path = synth.write(out, users=5, events_per_user=50, items=200, contexts=4, seed=1)
    assert ev_path == out and it_path == tmp_path / "syn" / "events.items.csv"
    assert ev_path.read_text().splitlines()[0] == "user_id,item_id,timestamp,action"
    assert it_path.read_text().splitlines()[0] == "item_id,category"
    ds = load_dataset(ev_path, it_path)
    assert len(ds.events) == 250 and ds.contexts.num_contexts == 5  # 4 + "unknown"
    assert ds.truth == synth.truth_path_for(out) and ds.truth.is_file()
    truth = synth.Truth.load(ds.truth)
    assert truth.ev_item.size == 250 and truth.item_ids.size == 200
    np.testing.assert_allclose(synth.oracle_scores(truth, 2, 30), synth.oracle_scores(
        synth.generate_with_truth(5, 50, 200, 4, 1).truth, 2, 30))
    assert synth.items_path_for("a/b.csv") == Path("a/b.items.csv")


def test_small_and_degenerate_arguments() -> None:
    ev, it = synth.generate(3, 1, 5, 1, seed=0)  # one context: interests capped at 1
    assert len(ev) == 3 and len(it) == 5
    with pytest.raises(ConfigError):
        synth.generate(1, 10, 3, 5, seed=0)  # fewer items than contexts
    with pytest.raises(ConfigError):
        synth.generate(0, 10, 10, 2, seed=0)


def test_more_events_than_items_re_consumes_instead_of_failing() -> None:
    ev, it = synth.generate(3, 400, 120, 4, seed=3)  # a user outlives the catalogue
    assert len(ev) == 1200 and ev.groupby("user_id").size().eq(400).all()
    per_user_distinct = ev.groupby("user_id")["item_id"].nunique()
    assert (per_user_distinct <= 120).all() and (per_user_distinct > 100).all()


def test_drift_zero_keeps_each_interest_taste_and_changes_nothing_else() -> None:
    drifting = synth.generate_with_truth(users=12, events_per_user=800, items=3000, contexts=10, seed=3)
    stable = synth.generate_with_truth(users=12, events_per_user=800, items=3000, contexts=10, seed=3, drift=0.0)
    t = stable.truth
    same_slot_changes = 0
    for u in range(12):
        k = int(t.int_offset[u + 1] - t.int_offset[u])
        blocks = sorted(set(t.ev_block[t.ev_offset[u]:t.ev_offset[u + 1]].tolist()))
        for a, b in zip(blocks, blocks[1:]):
            for g in range(k):
                if t.block_ctx[a + g] == t.block_ctx[b + g]:  # same category: the taste must not move
                    assert np.allclose(t.taste[a + g], t.taste[b + g])
                    same_slot_changes += 1
    assert same_slot_changes > 0
    d = drifting.truth
    assert not np.allclose(d.taste, t.taste)  # the default drifts
    # the random stream is the same: the first era of every user is identical
    first = [int(d.ev_offset[u]) for u in range(12)]
    assert d.ev_item[first].tolist() == t.ev_item[first].tolist()
    with pytest.raises(ConfigError):
        synth.generate_with_truth(users=2, events_per_user=10, items=100, contexts=2, seed=0, drift=-1.0)
