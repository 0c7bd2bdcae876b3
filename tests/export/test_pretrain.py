"""PPMI-SVD item vectors: items consumed together (in one context, or anywhere in the sequence
for the global mode) end up close, only training positions count, the mix is both parts side
by side, and the vectors initialise the model (TrainConfig.pretrain)."""

import numpy as np
import pytest

from longretriever.core.contexts import ContextTable
from longretriever.core.errors import ConfigError
from longretriever.data.events import Dataset, EventLog
from longretriever.export.pretrain import (MIX_GLOBAL_SHARE, context_pairs, cooccurrence_embeddings, global_embeddings,
                                          global_pairs, item_embeddings, ppmi_svd, symmetric_counts)
from longretriever.export.train import TrainConfig, build_model, make_split


def two_tribes(n_users: int = 40, seed: int = 0) -> Dataset:
    """One context, two groups of items (1000-1009 and 1010-1019); every user consumes one group."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = 1000 + 10 * (u % 2)
        for j in range(30):
            rows.append((u, group + int(rng.integers(0, 10)), 100 + j))
    a = np.array(rows, np.int64)
    mapping = {1000 + i: "c0" for i in range(20)}
    return Dataset("tribes", EventLog(a[:, 0], a[:, 1], a[:, 2] * 1000, None), ContextTable.from_mapping(mapping), {})


def test_items_of_one_group_are_closer_than_items_of_the_other():
    split = make_split(two_tribes())
    emb = cooccurrence_embeddings(split, dim=4, window=5)
    ids = split.vocab.dense(np.arange(1000, 1020))
    v = emb[ids] / np.linalg.norm(emb[ids], axis=1, keepdims=True)
    cos = v @ v.T
    same = np.r_[cos[:10, :10][~np.eye(10, dtype=bool)], cos[10:, 10:][~np.eye(10, dtype=bool)]]
    other = cos[:10, 10:].ravel()
    assert same.mean() > 0.5 > other.mean()
    assert np.isclose(np.linalg.norm(emb[ids], axis=1).mean(), 1.0, atol=0.05)


def test_only_training_positions_are_counted():
    ds = two_tribes(6)
    ev = ds.events
    # each user's last two events (validation and test targets) are items seen nowhere else
    last = np.r_[np.flatnonzero(np.diff(ev.user_ids)), ev.user_ids.size - 1]
    items = ev.item_ids.copy()
    items[last] = 5000 + 2 * np.arange(last.size)
    items[last - 1] = 5001 + 2 * np.arange(last.size)
    mapping = {int(i): "c0" for i in np.unique(items)}
    ds = Dataset("held-out", EventLog(ev.user_ids, items, ev.ts_ms, None), ContextTable.from_mapping(mapping), {})
    split = make_split(ds)
    rows, cols = context_pairs(split, window=100)
    his = [split.train_range(u)[1] for u in split.users]
    assert rows.size == sum(h * (h - 1) // 2 for h in his)  # every pair inside a training prefix
    held = split.vocab.dense(np.arange(5000, 5000 + 2 * last.size))
    assert not np.isin(held, np.r_[rows, cols]).any()
    assert not cooccurrence_embeddings(split, 4, 100)[held].any()


def test_no_cooccurrence_gives_zero_vectors():
    assert not ppmi_svd(np.zeros(0, np.int64), np.zeros(0, np.int64), 5, 3).any()


def test_pretrain_initialises_the_item_embeddings_and_rejects_unknown_names():
    split = make_split(two_tribes())
    cfg = TrainConfig(dim=8, pretrain="ppmi", pretrain_window=5)
    model = build_model(split, cfg)
    want = cooccurrence_embeddings(split, 8, 5, cfg.seed)
    got = model.item_emb.weight.detach().numpy()[1:1 + len(split.vocab)]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
    with pytest.raises(ConfigError):
        build_model(split, TrainConfig(dim=8, pretrain="word2vec"))
    assert TrainConfig().pretrain == "ppmi_mix"


def two_tribes_across_contexts(n_users: int = 60, seed: int = 0) -> Dataset:
    """Two contexts of 20 items each; tribe A alternates items 0-9 of c0 with 0-9 of c1, tribe B
    items 10-19 of each. Inside a context both tribes look alike to nobody but themselves; the
    cross-context link (A's c0 items go with A's c1 items) is only visible globally."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        off = 10 * (u % 2)
        for j in range(40):
            base = 1000 if j % 2 == 0 else 2000
            rows.append((u, base + off + int(rng.integers(0, 10)), 100 + j))
    a = np.array(rows, np.int64)
    mapping = {**{1000 + i: "c0" for i in range(20)}, **{2000 + i: "c1" for i in range(20)}}
    return Dataset("across", EventLog(a[:, 0], a[:, 1], a[:, 2] * 1000, None), ContextTable.from_mapping(mapping), {})


def _cos(emb, a, b):
    x, y = emb[a], emb[b]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return x @ y.T


def test_global_vectors_link_items_across_contexts():
    split = make_split(two_tribes_across_contexts())
    rows, cols = global_pairs(split, window=3)
    ictx = np.asarray(split.item_contexts)
    assert (ictx[rows] != ictx[cols]).any()  # pairs cross contexts, unlike context_pairs
    emb = global_embeddings(split, dim=4, window=3)
    d = split.vocab.dense
    a_c0, a_c1 = d(np.arange(1000, 1010)), d(np.arange(2000, 2010))
    b_c1 = d(np.arange(2010, 2020))
    # same tribe across contexts: aligned; other tribe: orthogonal (per-context bases are
    # independent per context, so only the global vectors can carry this)
    assert _cos(emb, a_c0, a_c1).mean() > 0.2
    assert abs(_cos(emb, a_c0, b_c1).mean()) < 0.05
    assert np.isclose(np.linalg.norm(emb, axis=1).mean(), 1.0, atol=0.05)


def test_symmetric_counts_count_each_pair_both_ways():
    rng = np.random.default_rng(3)
    r, c = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    a, b, n = symmetric_counts(r, c, 7)
    want = np.zeros((7, 7), np.int64)
    np.add.at(want, (r, c), 1)
    np.add.at(want, (c, r), 1)
    got = np.zeros((7, 7), np.int64)
    got[a, b] = n
    assert (got == want).all()
    assert (np.lexsort((b, a)) == np.arange(a.size)).all()


def test_mix_puts_per_context_and_global_dimensions_side_by_side():
    split = make_split(two_tribes_across_contexts())
    dim = 8
    g = int(round(dim * MIX_GLOBAL_SHARE))
    mix = item_embeddings(split, "ppmi_mix", dim, 3, 0)
    per, glob = cooccurrence_embeddings(split, dim - g, 3, 0), global_embeddings(split, g, 3, 0)
    assert mix.shape == (len(split.vocab), dim)
    # each part is its own factorisation up to one common scale
    s = np.linalg.norm(mix[:, :dim - g]) / np.linalg.norm(per)
    assert np.allclose(mix[:, :dim - g], per * s, atol=1e-5)
    assert np.allclose(mix[:, dim - g:], glob * s, atol=1e-5)
    assert np.isclose(np.linalg.norm(mix, axis=1).mean(), 1.0, atol=0.05)
    with pytest.raises(ValueError):
        item_embeddings(split, "word2vec", dim)
