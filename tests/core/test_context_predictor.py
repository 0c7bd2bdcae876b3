"""The learned next-context predictor: features, exact serialisation, training on planted
structure, and its use as the second context choice."""

import math

import numpy as np
import pytest

from longretriever.core.context_predictor import (DEFAULT_TAUS, EPS, ContextPredictor, num_features,
                                             predictor_features)
from longretriever.core.errors import BundleError
from longretriever.core.multicontext import choice_weights, choose_contexts, context_weights


def test_features_hand_checked():
    f = predictor_features(np.array([1, 1, 2]), 3, taus=(2.0,))
    w = [math.exp(-1.0), math.exp(-0.5), 1.0]  # ages 2, 1, 0
    tot = sum(w)
    h = [0.0, (w[0] + w[1]) / tot, w[2] / tot]
    assert f.shape == (6,)
    np.testing.assert_allclose(f[:3], h, rtol=1e-12)
    np.testing.assert_allclose(f[3:], np.log(np.array(h) + EPS), rtol=1e-12)


def test_features_window_and_out_of_range_contexts():
    rng = np.random.default_rng(0)
    long = rng.integers(0, 5, 3000)
    np.testing.assert_array_equal(predictor_features(long, 5, window=1000),
                                  predictor_features(long[-1000:], 5, window=1000))
    assert not np.array_equal(predictor_features(long, 5, window=1000),
                              predictor_features(long[-999:], 5, window=1000))
    # a context id the predictor does not know is ignored, not an index error
    f = predictor_features(np.array([1, 9, -1, 2]), 3, taus=(2.0,))
    age_w = np.exp(-np.array([3.0, 0.0]) / 2.0)  # context 1 at age 3, context 2 at age 0
    np.testing.assert_allclose(f[:3], [0.0, age_w[0] / age_w.sum(), age_w[1] / age_w.sum()])
    assert np.all(predictor_features(np.zeros(0, np.int64), 3) == np.concatenate(
        [np.r_[np.zeros(3), np.log(np.zeros(3) + EPS)]] * len(DEFAULT_TAUS)))


def frequency_like(c: int) -> ContextPredictor:
    """Logits = log(h_200 + EPS): ranks contexts like the recency-weighted frequency choice."""
    wt = np.zeros((num_features(c), c))
    off = 2 * (len(DEFAULT_TAUS) - 1) * c + c  # the log(h_200) block
    wt[off:off + c] = np.eye(c)
    return ContextPredictor(wt, np.zeros(c))


def test_predictor_can_express_the_frequency_choice():
    rng = np.random.default_rng(1)
    p = frequency_like(6)
    for _ in range(20):
        hist = rng.integers(1, 6, int(rng.integers(1, 400)))
        freq = choose_contexts(context_weights(hist), 3)
        learned = choose_contexts(choice_weights(hist, p), 3)
        assert [c for c, _ in learned] == [c for c, _ in freq]
        probs = p.probabilities(hist)
        assert abs(probs.sum() - 1) < 1e-12 and np.all(probs > 0)
    assert p.weights(np.zeros(0, np.int64)) == {}


def test_json_round_trip_is_bit_exact_and_validated():
    rng = np.random.default_rng(2)
    p = ContextPredictor(rng.standard_normal((num_features(4), 4)), rng.standard_normal(4))
    q = ContextPredictor.from_json(p.to_json())
    hist = rng.integers(0, 4, 500)
    assert p.probabilities(hist).tobytes() == q.probabilities(hist).tobytes()
    with pytest.raises(BundleError, match="shape"):
        ContextPredictor(np.zeros((5, 4)), np.zeros(4))
    with pytest.raises(BundleError, match="non-finite"):
        ContextPredictor(np.full((num_features(2), 2), np.nan), np.zeros(2))
    for bad in ("{", '{"kind": "mlp"}', '{"kind": "logistic", "taus": [2.0]}'):
        with pytest.raises(BundleError, match="context_predictor.json"):
            ContextPredictor.from_json(bad)


def cyclic_dataset(n_users=40, n_ctx=4, per_ctx=15, length=60, seed=0):
    """Every user walks the contexts in a fixed cycle c -> c+1: the next context is fully
    predictable from the last one, and it is always the *least* recent of the cycle."""
    from longretriever.core.contexts import ContextTable
    from longretriever.data.events import Dataset, EventLog

    rng = np.random.default_rng(seed)
    mapping = {1000 + i: f"c{i % n_ctx}" for i in range(n_ctx * per_ctx)}
    rows = []
    for u in range(n_users):
        c0 = int(rng.integers(0, n_ctx))
        for j in range(length):
            c = (c0 + j) % n_ctx
            rows.append((u, 1000 + c + n_ctx * int(rng.integers(0, per_ctx)), 100 + j))
    a = np.array(rows, np.int64)
    return Dataset("cyc", EventLog(a[:, 0], a[:, 1], a[:, 2] * 1000, None),
                   ContextTable.from_mapping(mapping), {})


def test_training_learns_planted_transitions_that_frequency_misses():
    from longretriever.export.context_predictor_train import context_examples, coverage, train_context_predictor
    from longretriever.export.train import make_split

    split = make_split(cyclic_dataset())
    pred, m = train_context_predictor(split)
    assert m["examples"] > 1000 and m["val_top1"] > 0.95, m
    assert m["val_top1_frequency"] < 0.05, m  # the next context is the least recent one
    test = context_examples(split, "test")
    assert coverage(pred, test, 1) > 0.95
    # deterministic: same data, same weights
    again, _ = train_context_predictor(split)
    assert np.array_equal(again.weight, pred.weight)
