"""MilvusIndex with a fake client (no Milvus): concurrent per-context searches, retries,
error wrapping; plus one real refused connection -> ServiceUnavailable."""

from __future__ import annotations

import numpy as np
import pytest

from longretriever.core.errors import BundleError, ServiceUnavailable
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
