"""End-to-end query benchmark: a real grpc.aio server in-process on loopback, a real Milvus
(``backend``: ``lite`` = a Milvus Lite file, ``server`` = a private Milvus standalone server
started for the run), synthetic random item vectors and synthetic user histories.

Per run (one per HNSW ``ef``) it reports gRPC round-trip latency (one sequential client in its
own process; ``grpc_inprocess_*``: a client inside the serving process, as before), the
Milvus part of those same calls (the per-context searches, measured inside the service), the numpy
floor (exact per-context matmul over contiguous per-context blocks, same vectors and limits),
recall of the answer against the exact answer of the same plan, a bare async pymilvus loop
issuing the same first-round searches (server), and sustained QPS from a separate
closed-loop load process (:mod:`~longretriever.benchmarks.query_load`) at rising concurrency,
with and without coalescing: ``qps_at_p99_50ms`` is the best QPS whose p99 stayed <= 50 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
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
from longretriever.core.ranking import first_depth
from longretriever.retriever.client import RetrieverClient
from longretriever.retriever.history import StateHistory
from longretriever.retriever import milvus_requests as mr
from longretriever.retriever.milvus_coalesce import Coalescer
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


class _Canned:
    """A backend answering every Retrieve at once with ``k`` fixed candidates: the gRPC floor
    (server, protobuf and a caller in its own process, no retrieval)."""

    names = [f"c{i}" for i in range(9)]

    def context_name(self, c: int) -> str:
        return self.names[c]

    def retrieve(self, user_id: int, k: int, max_contexts: int, exclude_seen: bool, timeout=None):
        from longretriever.core.multicontext import Candidate
        from longretriever.retriever.service import RetrieveResult

        return RetrieveResult(user_id, [Candidate(i, 0.5, 1 + i % 8) for i in range(k)], "v", "0:1", False)


def _grpc_floor(users: int, k: int, seconds: float) -> dict[str, Any]:
    srv = _ServerThread(_Canned())
    try:
        return _load(f"127.0.0.1:{srv.port}", users, k, (1,), seconds)[0]
    finally:
        srv.stop()


def _bare_async_loop(uri: str, collection: str, searches: list[list[tuple[int, np.ndarray, int]]],
                     index_type: str, ef: int | None, loop: asyncio.AbstractEventLoop,
                     sizes: dict[int, int] | None = None) -> list[float]:
    """Per query: the same per-context searches issued concurrently from AsyncMilvusClient,
    nothing else (ms per query). Runs on ``loop``, the gRPC server's (idle meanwhile): a second
    grpc.aio event loop in one process makes grpc's poller fail (BlockingIOError, logged per
    event)."""
    from pymilvus import AsyncMilvusClient

    from longretriever.retriever import milvus_requests as mr

    async def main() -> list[float]:
        c = AsyncMilvusClient(uri, timeout=30)
        out = []
        try:
            for i, query in enumerate([searches[0], *searches]):
                t = time.perf_counter()
                await asyncio.gather(*(c.search(collection, data=[v.tolist()], limit=n, anns_field=mr.VECTOR_FIELD,
                                                partition_names=[mr.partition_name(ctx)],
                                                search_params=mr.search_params(index_type, n, ef, (sizes or {}).get(ctx, 0)),
                                                consistency_level=mr.CONSISTENCY) for ctx, v, n in query))
                if i:  # the first is a warm-up
                    out.append((time.perf_counter() - t) * 1000)
        finally:
            await c.close()
        return out

    return asyncio.run_coroutine_threadsafe(main(), loop).result()


def _load(target: str, users: int, k: int, levels: tuple[int, ...], seconds: float) -> list[dict[str, Any]]:
    out = []
    for n in levels:
        p = subprocess.run([sys.executable, "-m", "longretriever.benchmarks.query_load", target, str(users),
                            str(k), str(n), str(seconds)], capture_output=True, text=True, timeout=seconds + 120)
        out.append(json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0
                   else {"concurrency": n, "error": p.stderr[-300:]})
    return out


def _best_qps(levels: list[dict[str, Any]], p99_ms: float = 50.0) -> float | None:
    ok = [r["qps"] for r in levels if r.get("p99_ms") is not None and r["p99_ms"] <= p99_ms and not r.get("errors")]
    return max(ok) if ok else None


def run_query_bench(items: int = 100_000, contexts: int = 8, k: int = 200, queries: int = 100,
                    users: int = 200, concurrency: int = 4, dim: int = 64, index: str = "flat",
                    uri: str | None = None, progress: bool = False, backend: str = "lite",
                    efs: tuple[int | None, ...] = (None,), load_levels: tuple[int, ...] = (1, 2, 4, 8, 16),
                    load_seconds: float = 4.0, min_slots: int = 0) -> list[dict[str, Any]]:
    """One run per ``ef`` (HNSW; ``None`` = the default) on one built collection."""
    from longretriever.infra.milvus import server as milvus_server

    floor_rt = _grpc_floor(users, k, min(load_seconds, 3.0))  # before the serving loop starts
    bundle = synthetic_bundle(items, contexts, dim)
    state = MemoryState.for_bundle(bundle)
    random_histories(bundle, state, users)
    tmp = tempfile.mkdtemp(prefix="lr_bench_")
    info = None
    if uri is None:
        if backend == "server":
            info = milvus_server.start(os.path.join(tmp, "milvus"))
            uri = info.uri
        else:
            uri = os.path.join(tmp, "milvus.db")
    index_ = MilvusIndex(uri, "bench_items", max_workers=4 * contexts)
    runs: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        built = index_.build(bundle, index=index, progress=progress)
        build_s = time.perf_counter() - t0
        sizes = pl.context_sizes(bundle.item_contexts)
        view = index_.open(bundle.version, len(bundle.item_ids), sizes)
        svc = RetrieverService(bundle, index_, state, cache=None, min_slots=min_slots)
        fixed = pl.Catalog.of(bundle, None, svc.window, 0)  # every chosen context searched
        rng = np.random.default_rng(5)
        user_ids = rng.integers(0, users, size=queries).tolist()
        # the exact answer of each query's plan (numpy floor as the searcher) and the floor's time
        floor = NumpyFloor(bundle.item_ids, bundle.item_contexts, bundle.item_embeddings)
        exact, exact8, floor_ms, first_round, queried = {}, {}, [], [], []
        for u in user_ids:
            h = StateHistory(state, u)
            plan = pl.plan_query(h, k, 8, svc.catalog)
            vecs = pl.encode_plan(plan, bundle)
            t = time.perf_counter()
            floor.search_contexts(vecs, plan.slots)
            floor_ms.append((time.perf_counter() - t) * 1000)
            exact[u] = {c.item_id for c in pl.answer(plan, vecs, floor, h, sizes)}
            if min_slots <= 0:  # the plan searches every chosen context already
                exact8[u] = exact[u]
            else:
                plan8 = pl.plan_query(h, k, 8, fixed)
                exact8[u] = {c.item_id for c in pl.answer(plan8, pl.encode_plan(plan8, bundle), floor, h, sizes)}
            need = {q.context: q.slots for q in plan.contexts if q.slots > 0}
            queried.append(len(need))
            first_round.append([(c, vecs[c], min(sizes[c], first_depth(n, True))) for c, n in need.items()])
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
            for ef in efs:
                index_.ef = ef
                index_.coalescer = Coalescer()
                for u in user_ids[:5]:
                    client.retrieve_pb(u, k)  # warm-up
                milvus_ms.clear()
                grpc_ms, overlap, overlap8 = [], [], []
                for u in user_ids:
                    t = time.perf_counter()
                    r = client.retrieve_pb(u, k)
                    grpc_ms.append((time.perf_counter() - t) * 1000)
                    got = {c.item_id for c in r.candidates}
                    overlap.append(len(exact[u] & got) / max(1, len(exact[u])))
                    overlap8.append(len(exact8[u] & got) / max(1, len(exact8[u])))
                inproc_ms = grpc_ms
                # the latency figures: one caller in its own process (as real callers are; a
                # client inside the serving process takes its CPU and GIL on this 2-core box),
                # sequential, and the Milvus part of those same calls
                milvus_ms.clear()
                seq = _load(f"127.0.0.1:{srv.port}", users, k, (1,), load_seconds)[0]
                seq_milvus = list(milvus_ms)
                bare = (_bare_async_loop(uri, view.collection, first_round, view.index_type, ef, srv.loop, view.sizes)
                        if index_.is_server and view.layout == "partition" else [])
                loads = {}
                for mode in ("single", "coalesced"):
                    index_.coalescer = Coalescer() if mode == "coalesced" else None
                    loads[mode] = _load(f"127.0.0.1:{srv.port}", users, k, load_levels, load_seconds)
                co_requests = None
                index_.coalescer = Coalescer()
                t = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    list(pool.map(lambda u: client.retrieve_pb(u, k), user_ids))
                qps = len(user_ids) / (time.perf_counter() - t)
                co_requests = index_.coalescer.requests / max(1, index_.coalescer.vectors)
                g50, m50, b50 = seq.get("p50_ms"), percentile(seq_milvus, .5), percentile(bare, .5)
                q_single, q_co = _best_qps(loads["single"]), _best_qps(loads["coalesced"])
                runs.append({
                    "backend": "server" if index_.is_server else "lite",
                    "items": items, "contexts": contexts, "k": k, "index": built["index"],
                    "layout": view.layout, "ef": (ef or "auto") if view.index_type == "HNSW" else None,
                    "ef_by_context": ({c: mr.search_params(view.index_type, k, ef, n)["params"]["ef"]
                                       for c, n in sorted((view.sizes or {}).items())}
                                      if view.index_type == "HNSW" else None),
                    "grpc_p50_ms": g50, "grpc_p99_ms": seq.get("p99_ms"), "grpc_calls": seq.get("calls"),
                    "grpc_inprocess_p50_ms": percentile(inproc_ms, .5),
                    "grpc_inprocess_p99_ms": percentile(inproc_ms, .99),
                    "milvus_p50_ms": m50, "milvus_p99_ms": percentile(seq_milvus, .99),
                    "floor_p50_ms": percentile(floor_ms, .5), "floor_p99_ms": percentile(floor_ms, .99),
                    "grpc_floor_p50_ms": floor_rt.get("p50_ms"),  # canned answer, same client
                    "bare_client_p50_ms": b50, "bare_client_p99_ms": percentile(bare, .99),
                    "recall_vs_exact": round(float(np.mean(overlap)), 4),
                    "contexts_queried": round(float(np.mean(queried)), 2), "min_slots": min_slots,
                    "recall_vs_fixed8_exact": round(float(np.mean(overlap8)), 4),
                    "qps_at_p99_50ms": q_co, "qps_at_p99_50ms_without_coalescing": q_single,
                    "coalescing_qps_ratio": round(q_co / q_single, 2) if q_co and q_single else None,
                    "load": loads, "requests_per_search_coalesced": round(co_requests, 3),
                    "grpc_over_milvus_p50": round(g50 / m50, 3) if g50 and m50 else None,
                    "milvus_over_bare_p50": round(m50 / b50, 3) if m50 and b50 else None,
                    "qps": round(qps, 1), "concurrency": concurrency, "queries": queries,
                    "build_s": round(build_s, 1), "build": {k_: v for k_, v in built.items() if k_.endswith("_s")},
                    "server_rss_mb": (round(milvus_server.rss_bytes(info) / 2**20) if info is not None
                                      and milvus_server.rss_bytes(info) else None),
                    "loadavg": [round(x, 2) for x in os.getloadavg()]})
            client.close()
        finally:
            srv.stop()
    finally:
        index_.close()
        if info is not None:
            milvus_server.stop(info.data_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    return runs
