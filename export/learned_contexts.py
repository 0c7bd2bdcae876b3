"""Learned contexts for catalogues without categories (or ``--contexts K`` to override them).

A first, context-free pass trains the same two-tower model with every item in one context,
then seeded k-means (k-means++ initialisation, cosine geometry) over its item embeddings
groups the items into ``K`` mutually exclusive contexts named ``k00..k{K-1}``. Only training
items are used (the split's train ranges), so validation/test events never shape contexts.
The resulting :class:`ContextTable` is stored in the bundle like a category table.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from longretriever.core.contexts import ContextTable
from longretriever.data.events import Dataset
from longretriever.core.errors import ConfigError


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 30) -> np.ndarray:
    """Cluster rows of ``x`` (L2-normalised inside) into ``k`` groups; returns labels.
    Deterministic for a seed. Empty clusters are re-seeded with the worst-fitting point."""
    if not 1 <= k <= len(x):
        raise ConfigError(f"--contexts must be in [1, {len(x)}], got {k}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    d2 = np.full(len(x), np.inf)
    for _ in range(1, k):  # k-means++
        d2 = np.minimum(d2, ((x - centers[-1]) ** 2).sum(1))
        centers.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    c = np.stack(centers)
    labels = np.zeros(len(x), np.int64)
    for _ in range(iters):
        sims = x @ c.T
        new = sims.argmax(1)
        for j in range(k):
            members = x[new == j]
            if len(members):
                c[j] = members.mean(0)
            else:  # re-seed with the point farthest from its centre
                far = int(np.argmin(sims[np.arange(len(x)), new]))
                c[j], new[far] = x[far], j
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def learn_contexts(ds: Dataset, k: int, cfg, progress: bool = False) -> Dataset:
    """The dataset with its context table replaced by ``k`` learned contexts."""
    from longretriever.export.train import make_split, train_longretriever

    flat = replace(ds, contexts=ContextTable.single())
    split = make_split(flat)
    first = replace(cfg, epochs=max(1, min(2, cfg.epochs)))
    model = train_longretriever(split, first, progress=progress).model
    import torch

    with torch.no_grad():
        emb = model.all_item_vectors().cpu().numpy()
    labels = kmeans(emb, k, seed=cfg.seed)
    names = [f"k{j:02d}" for j in range(k)]
    mapping = {int(i): names[int(lbl)] for i, lbl in zip(split.vocab.item_ids.tolist(), labels.tolist())}
    return replace(ds, contexts=ContextTable.from_mapping(mapping))
