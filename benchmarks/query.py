"""End-to-end query benchmark: a real grpc.aio server in-process on loopback, a real Milvus
Lite collection, synthetic random item vectors and synthetic user histories.

Per run it reports gRPC round-trip latency (client side), the Milvus part (the 8 concurrent
per-context searches, measured inside the service), the numpy floor (exact per-context matmul
over contiguous per-context blocks for the same query vectors and list lengths) and the
throughput with ``concurrency`` client threads.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from longretriever.benchmarks.common import NumpyFloor, percentile
from longretriever.benchmarks.synthetic import MemoryState, random_histories, synthetic_bundle
from longretriever.core import planner as pl
from longretriever.retriever.client import RetrieverClient
from longretriever.retriever.history import StateHistory
from longretriever.retriever.milvus_index import MilvusIndex
from longretriever.retriever.server import build_server, set_serving
from longretriever.retriever.service import RetrieverService


class _ServerThread:
    """grpc.aio server on its own event loop thread."""

    def __init__(self, backend: Any) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        async def start():
            self.server, self.port, hs = build_server(backend, "127.0.0.1", 0)
            await self.server.start()
            set_serving(hs, True)
            ready.set()

        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()
        ready.wait(30)

    def _run(self, start):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def run_query_bench(items: int = 100_000, contexts: int = 8, k: int = 200, queries: int = 100,
                    users: int = 200, concurrency: int = 4, dim: int = 64, index: str = "flat",
                    uri: str | None = None, progress: bool = False) -> dict[str, Any]:
    bundle = synthetic_bundle(items, contexts, dim)
    state = MemoryState.for_bundle(bundle)
    random_histories(bundle, state, users)
    tmp = None
    if uri is None:
        tmp = tempfile.mkdtemp(prefix="lr_bench_")
        uri = os.path.join(tmp, "milvus.db")
    index_ = MilvusIndex(uri, "bench_items", max_workers=contexts)
    try:
        t0 = time.perf_counter()
        built = index_.build(bundle, index=index, progress=progress)
        build_s = time.perf_counter() - t0
        sizes = pl.context_sizes(bundle.item_contexts)
        index_.open(bundle.version, len(bundle.item_ids), sizes)
        svc = RetrieverService(bundle, index_, state, cache=None)
        milvus_ms: list[float] = []

        class Recording:
            def __getattr__(self, name):
                return getattr(svc, name)

            def retrieve(self, *a, **kw):
                r = svc.retrieve(*a, **kw)
                if "milvus" in r.timings_ms:
                    milvus_ms.append(r.timings_ms["milvus"])
                return r

        srv = _ServerThread(Recording())
        try:
            client = RetrieverClient(f"127.0.0.1:{srv.port}", timeout=30)
            rng = np.random.default_rng(5)
            user_ids = rng.integers(0, users, size=queries).tolist()
            for u in user_ids[:5]:
                client.retrieve_pb(u, k)  # warm-up
            milvus_ms.clear()
            grpc_ms = []
            for u in user_ids:
                t = time.perf_counter()
                client.retrieve_pb(u, k)
                grpc_ms.append((time.perf_counter() - t) * 1000)
            seq_milvus = list(milvus_ms)
            # throughput with concurrent clients
            t = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(lambda u: client.retrieve_pb(u, k), user_ids))
            qps = len(user_ids) / (time.perf_counter() - t)
            client.close()
        finally:
            srv.stop()

        # numpy floor for the same plans / vectors
        floor = NumpyFloor(bundle.item_ids, bundle.item_contexts, bundle.item_embeddings)
        floor_ms = []
        for u in user_ids:
            plan = pl.plan_query(StateHistory(state, u), k, 8, svc.catalog)
            vecs = pl.encode_plan(plan, bundle)
            t = time.perf_counter()
            floor.search_contexts(vecs, plan.slots)
            floor_ms.append((time.perf_counter() - t) * 1000)
    finally:
        index_.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"items": items, "contexts": contexts, "k": k,
            "grpc_p50_ms": percentile(grpc_ms, .5), "grpc_p99_ms": percentile(grpc_ms, .99),
            "milvus_p50_ms": percentile(seq_milvus, .5), "milvus_p99_ms": percentile(seq_milvus, .99),
            "floor_p50_ms": percentile(floor_ms, .5), "floor_p99_ms": percentile(floor_ms, .99),
            "qps": round(qps, 1), "concurrency": concurrency, "queries": queries, "index": built["index"],
            "build_s": round(build_s, 1)}
