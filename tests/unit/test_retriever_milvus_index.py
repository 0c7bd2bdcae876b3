"""MilvusIndex with a fake client (no Milvus): concurrent per-context searches, retries,
error wrapping; plus one real refused connection -> ServiceUnavailable."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from longretriever.core.errors import BundleError, ServiceUnavailable
from longretriever.retriever import milvus_requests as mr
from longretriever.retriever.milvus_index import MilvusIndex


class FakeClient:
    def __init__(self, uri, fail_first=0, version="v1"):
        self.searches = []
        self.fail_left = fail_first
        self.version = version
        self.lock = threading.Lock()

    def has_collection(self, name):
        return True

    def describe_collection(self, name):
        return {"description": mr.description_for(self.version), "fields": []}

    def load_collection(self, name):
        pass

    def describe_index(self, name, field):
        return {"index_type": "FLAT"}

    def query(self, name, filter, output_fields):
        return [{"count(*)": 10}]

    def search(self, name, data, anns_field, limit, filter, search_params, output_fields, timeout):
        with self.lock:
            if self.fail_left:
                self.fail_left -= 1
                raise ConnectionError("transient")
            self.searches.append((filter, limit, threading.get_ident()))
        c = int(filter.split("==")[1])
        return [[{"id": c * 100 + i, "distance": 1.0 - i / 10} for i in range(limit)]]

    def close(self):
        pass


def test_search_contexts_parses_and_retries():
    fc = FakeClient("x", fail_first=1)
    ix = MilvusIndex("fake.db", "c1", client_factory=lambda uri: fc)
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
    fc = FakeClient("x", fail_first=100)
    ix = MilvusIndex("fake.db", "c1", client_factory=lambda uri: fc)
    ix.open("v1")
    with pytest.raises(ServiceUnavailable):
        ix.search_contexts({1: np.ones(4)}, {1: 3})


def test_unreachable_server_is_service_unavailable():
    ix = MilvusIndex("http://127.0.0.1:1", "c1", timeout=1, attempts=1)
    with pytest.raises(ServiceUnavailable):
        ix.exists()
