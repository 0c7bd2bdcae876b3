"""MilvusIndex with a fake client (no Milvus): concurrent per-context searches, retries,
error wrapping; plus one real refused connection -> ServiceUnavailable."""

from __future__ import annotations

import numpy as np
import pytest

from longretriever.core.errors import BundleError, ServiceUnavailable
from longretriever.retriever import milvus_requests as mr
from longretriever.retriever.milvus_index import MilvusIndex
from tests.fixtures.fakes import MilvusWorld


def test_search_contexts_parses_and_retries():
    fc = MilvusWorld(fail_first=1)
    ix = MilvusIndex("fake.db", "c1", client_factory=fc.factory)
    ix.open("v1", expected_items=10, context_sizes={1: 5, 2: 5, 3: 5})
    out = ix.search_contexts({1: np.ones(4), 2: np.ones(4), 3: np.ones(4)}, {1: 3, 2: 0, 3: 9})
    assert [c.item_id for c in out[1]] == [100, 101, 102]
    assert out[2] == [] and len(out[3]) == 5  # capped by the context size
    assert sorted(f for f, _, _ in fc.searches) == ["context == 1", "context == 3"]
    with pytest.raises(BundleError):
        ix.open("v2")
    with pytest.raises(BundleError):
        ix.open("v1", expected_items=11)
    ix.close()


def test_default_hnsw_ef_grows_with_the_searched_partition():
    # recall at a fixed ef falls as a partition grows (docs/milvus.md): without --ef each
    # context's search gets ef = max(400, its rows / 160); an explicit ef applies to all
    fc = MilvusWorld()
    fc.index_type = "HNSW"
    ix = MilvusIndex("fake.db", "c1", client_factory=fc.factory)
    ix.open("v1", context_sizes={1: 1_000, 2: 200_000, 3: 10_000_000})
    ix.search_contexts({c: np.ones(4) for c in (1, 2, 3)}, {1: 5, 2: 5, 3: 5})
    ef = {int(f.split("==")[1]): p["params"]["ef"] for f, p in fc.params.items()}
    assert ef == {1: 400, 2: 1_250, 3: mr.MAX_HNSW_EF}
    ix.ef = 700
    ix.search_contexts({c: np.ones(4) for c in (1, 2)}, {1: 5, 2: 900})
    assert {f: p["params"]["ef"] for f, p in fc.params.items() if "3" not in f} == \
        {"context == 1": 700, "context == 2": 900}  # never below the limit
    assert [mr.default_ef(n) for n in (0, 64_000, 64_001, 160_000)] == [400, 400, 401, 1_000]
    ix.close()


def test_persistent_connection_error_is_service_unavailable():
    fc = MilvusWorld(fail_first=100)
    ix = MilvusIndex("fake.db", "c1", client_factory=fc.factory)
    ix.open("v1")
    with pytest.raises(ServiceUnavailable):
        ix.search_contexts({1: np.ones(4)}, {1: 3})


def test_unreachable_server_is_service_unavailable():
    ix = MilvusIndex("http://127.0.0.1:1", "c1", timeout=1, attempts=1)
    with pytest.raises(ServiceUnavailable):
        ix.exists()
