"""Real Milvus Lite file in tmp_path: FLAT per-context search equals numpy exact top-k,
idempotent re-index, version mismatch refused."""

from __future__ import annotations

import numpy as np
import pytest

from longretriever.core.errors import BundleError
from longretriever.core.ranking import exact_search
from longretriever.benchmarks.synthetic import synthetic_bundle
from longretriever.retriever.milvus_index import MilvusIndex
from longretriever.core.planner import context_sizes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("milvus") / "milvus.db")
    b = synthetic_bundle(3000, n_contexts=4, dim=16, seed=7)
    ix = MilvusIndex(uri, "it_items", max_workers=4)
    stats = ix.build(b, index="flat", batch=700, progress=False)
    assert stats["items"] == 3000 and stats["index"] == "FLAT" and stats["created"]
    ix.open(b.version, len(b.item_ids), context_sizes(b.item_contexts))
    yield b, ix, uri
    ix.close()


def test_flat_search_equals_numpy_exact(built):
    b, ix, _ = built
    rng = np.random.default_rng(0)
    for trial in range(3):
        vecs = {c: (v := rng.standard_normal(16).astype(np.float32)) / np.linalg.norm(v) for c in (1, 2, 3, 4)}
        topk = {1: 50, 2: 1, 3: 200, 4: 0}
        got = ix.search_contexts(vecs, topk)
        assert got[4] == []
        for c in (1, 2, 3):
            m = b.item_contexts == c
            want = exact_search(vecs[c], b.item_ids[m], b.item_embeddings[m], topk[c], c)
            assert [x.item_id for x in got[c]] == [x.item_id for x in want]
            assert all(x.context == c for x in got[c])
            np.testing.assert_allclose([x.score for x in got[c]], [x.score for x in want], atol=1e-5)


def test_reindex_is_idempotent_and_version_checked(built):
    b, ix, _ = built
    again = ix.build(b, index="flat", batch=1000, progress=False)
    assert again["items"] == 3000 and not again["created"]
    assert ix.stored_version() == b.version
    with pytest.raises(BundleError):
        ix.open("some-other-version")
    with pytest.raises(BundleError):
        ix.open(b.version, expected_items=3001)
    ix.open(b.version, len(b.item_ids), context_sizes(b.item_contexts))


def test_new_bundle_version_rebuilds(tmp_path):
    uri = str(tmp_path / "m.db")
    b1 = synthetic_bundle(500, n_contexts=2, dim=8, seed=1)
    b2 = synthetic_bundle(300, n_contexts=2, dim=8, seed=2)
    with MilvusIndex(uri, "v_items") as ix:
        ix.build(b1, progress=False)
        st = ix.build(b2, progress=False)  # other version: dropped and rebuilt, no stale rows
        assert st["created"] and st["items"] == 300
        assert ix.stored_version() == b2.version
        with pytest.raises(BundleError):
            ix.open(b1.version)


def test_lite_file_held_by_another_process_is_refused(tmp_path):
    """milvus-lite logs an ERROR for a file another process holds and pymilvus' next attempt
    then starts a second server on it; MilvusIndex refuses instead, and works once it is free."""
    import subprocess
    import sys

    from longretriever.core.errors import ConfigError

    uri = str(tmp_path / "held.db")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, pymilvus; c = pymilvus.MilvusClient(sys.argv[1]); "
                               "print('ready', flush=True); sys.stdin.read()", uri],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        ix = MilvusIndex(uri, "it_items")
        with pytest.raises(ConfigError, match="open in another process"):
            ix.build(synthetic_bundle(50, n_contexts=2, dim=8), index="flat", progress=False)
        ix.close()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with MilvusIndex(uri, "it_items") as ix:
        assert ix.build(synthetic_bundle(50, n_contexts=2, dim=8), index="flat", progress=False)["items"] == 50
