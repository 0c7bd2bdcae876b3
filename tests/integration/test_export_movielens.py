"""ml-latest-small checks (skipped when the data folder is absent)."""

from pathlib import Path

import numpy as np
import pytest

ML = Path("/work/shared/data/ml-latest-small")
pytestmark = pytest.mark.skipif(not (ML / "ratings.csv").is_file(), reason="ml-latest-small not available")


@pytest.fixture(scope="module")
def split():
    from export.train import make_split
    from longretriever.datasets import load_dataset

    return make_split(load_dataset(ML, None, "movielens"))


def test_split_and_cases(split):
    from export.evaluate import make_cases

    assert len(split.users) == 610 and len(split.vocab) > 9000
    test, val = make_cases(split, "test"), make_cases(split, "val")
    assert test.users.size == val.users.size == 610
    assert (test.ends == val.ends + 1).all()
    # training targets never include the validation / test events
    assert split.train_freq.sum() == sum(len(u) - 3 for u in split.users)


def test_popularity_baseline_beats_random(split):
    from export.evaluate import eval_popularity, make_cases, mean_metrics, rank_metrics

    m = mean_metrics(rank_metrics(eval_popularity(split, make_cases(split, "test"))))
    assert m["recall@100"] > 100 / len(split.vocab) * 3


@pytest.mark.slow
def test_one_epoch_train_export_retrieve(split, tmp_path):
    from export.bundle import load_bundle, save_bundle
    from export.evaluate import eval_longretriever, make_cases, mean_metrics, plan_cases
    from export.reference import retrieve_offline
    from export.train import TrainConfig, train_longretriever

    cfg = TrainConfig(epochs=1, budget=16)
    res = train_longretriever(split, cfg, progress=False)
    out = save_bundle(tmp_path / "b", res.model, split.vocab, split.item_contexts, split.table.names,
                      split.train_freq, {"k": cfg.k, "w": cfg.w})
    b = load_bundle(out)
    test = make_cases(split, "test")
    rows = eval_longretriever(res.model, split, test, plan_cases(split, test, cfg.k, cfg.w))
    assert 0 <= mean_metrics(rows)["recall@100"] <= 1
    # the batched evaluator equals retrieve_offline on the bundle for a few users
    for j in range(5):
        u = split.users[test.users[j]]
        e = test.ends[j]
        got = retrieve_offline(b, u.items[:e], u.ts[:e], u.contexts[:e], 10)
        assert len(got) == 10
        tgt = u.items[e]
        assert rows[j]["hr@10"] == float(tgt in [c.item_id for c in got])
