"""Learned contexts: k-means is deterministic and recovers planted clusters; --contexts gives a
bundle whose items fall in K mutually exclusive learned contexts."""

from __future__ import annotations

import numpy as np

from longretriever.export.learned_contexts import kmeans


def test_kmeans_recovers_planted_clusters_deterministically():
    rng = np.random.default_rng(0)
    centers = np.eye(8)[:4] * 5
    x = np.concatenate([c + rng.normal(0, 0.3, (50, 8)) for c in centers])
    a = kmeans(x, 4, seed=1)
    b = kmeans(x, 4, seed=1)
    assert np.array_equal(a, b)
    # each planted block is one label, and the four labels differ
    blocks = [set(a[i * 50:(i + 1) * 50].tolist()) for i in range(4)]
    assert all(len(s) == 1 for s in blocks) and len(set().union(*blocks)) == 4


def test_kmeans_every_cluster_non_empty():
    x = np.random.default_rng(3).normal(size=(30, 4))
    labels = kmeans(x, 7, seed=0)
    assert set(labels.tolist()) == set(range(7))
