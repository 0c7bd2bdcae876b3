"""ml-latest-small checks (skipped when the data folder is absent)."""

from pathlib import Path

import numpy as np
import pytest

ML = Path("/work/shared/data/ml-latest-small")
pytestmark = pytest.mark.skipif(not (ML / "ratings.csv").is_file(), reason="ml-latest-small not available")


@pytest.fixture(scope="module")
def split():
    from longretriever.export.train import make_split
    from longretriever.data.events import load_dataset

    return make_split(load_dataset(ML, None, "movielens"))


def test_split_and_cases(split):
    from longretriever.export.evaluate import make_cases

    assert len(split.users) == 610 and len(split.vocab) > 9000
    test, val = make_cases(split, "test"), make_cases(split, "val")
    assert test.users.size == val.users.size == 610
    assert (test.ends == val.ends + 1).all()
    # training targets never include the validation / test events
    assert split.train_freq.sum() == sum(len(u) - 3 for u in split.users)


def test_popularity_baseline_beats_random(split):
    from longretriever.export.evaluate import eval_popularity, make_cases, mean_metrics, rank_metrics

    m = mean_metrics(rank_metrics(eval_popularity(split, make_cases(split, "test"))))
    assert m["recall@100"] > 100 / len(split.vocab) * 3


@pytest.mark.slow
def test_one_epoch_train_export_retrieve(split, tmp_path):
    from longretriever.retriever.bundle import load_bundle
    from longretriever.export.bundle_writer import save_bundle
    from longretriever.export.evaluate import eval_longretriever, make_cases, mean_metrics, plan_cases
    from longretriever.core.planner import retrieve_offline
    from longretriever.export.train import TrainConfig, train_longretriever

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


def test_int8_recall_within_one_percent_of_fp32_on_validation(split, tmp_path):
    """The dynamic-int8 encoder's validation recall@100 (through retrieve_offline, i.e. the
    ONNX sessions serving uses) is within 1% relative of the fp32 encoder's."""
    from longretriever.retriever.bundle import load_bundle
    from longretriever.export.bundle_writer import save_bundle
    from longretriever.export.evaluate import make_cases
    from longretriever.core.planner import retrieve_offline
    from longretriever.export.train import TrainConfig, train_longretriever

    cfg = TrainConfig(epochs=1, budget=32)
    res = train_longretriever(split, cfg, progress=False)
    out = save_bundle(tmp_path / "b", res.model, split.vocab, split.item_contexts, split.table.names,
                      split.train_freq, {"k": cfg.k, "w": cfg.w}, quantize="int8")
    fp32, int8 = load_bundle(out, intra_op_threads=1), load_bundle(out, intra_op_threads=1, int8=True)
    val = make_cases(split, "val")
    hits = {"fp32": 0, "int8": 0}
    for j in range(val.users.size):
        u = split.users[val.users[j]]
        e = val.ends[j]
        for name, b in (("fp32", fp32), ("int8", int8)):
            got = retrieve_offline(b, u.items[:e], u.ts[:e], u.contexts[:e], 100)
            hits[name] += int(u.items[e] in {c.item_id for c in got})
    assert hits["fp32"] > 30, hits  # a trained model, not noise
    assert abs(hits["int8"] - hits["fp32"]) <= 0.01 * hits["fp32"], hits
