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
from types import SimpleNamespace
from typing import Any

import numpy as np

from longretriever.benchmarks.milvus_probe import NumpyFloor, percentile


class SyntheticBundle:
    """Bundle-like object: random L2-normalised item vectors, mean-pooling "encoder"."""

    def __init__(self, n_items: int, n_contexts: int = 8, dim: int = 64, seed: int = 0,
                 hard_k: int = 64, w: int = 64) -> None:
        rng = np.random.default_rng(seed)
        self.version = f"synthetic-{n_items}-{n_contexts}-{dim}-{seed}"
        self.item_ids = np.arange(1_000_000, 1_000_000 + n_items, dtype=np.int64)
        self.item_contexts = rng.integers(1, n_contexts + 1, size=n_items).astype(np.int32)
        v = rng.standard_normal((n_items, dim), dtype=np.float32)
        self.item_embeddings = v / np.linalg.norm(v, axis=1, keepdims=True)
        self.popularity = rng.random(n_items)
        self.context_names = ("unknown", *[f"cat{i}" for i in range(1, n_contexts + 1)])
        self.config = {"k": hard_k, "w": w}
        self._ctx_emb = rng.standard_normal((n_contexts + 1, dim), dtype=np.float32) * 0.1

    def encode(self, ctx_items, recent_items, contexts) -> np.ndarray:
        out = np.empty((len(contexts), self.item_embeddings.shape[1]), np.float32)
        base = self.item_ids[0]
        for r, (ci, ri, c) in enumerate(zip(ctx_items, recent_items, contexts)):
            idx = np.concatenate([ci, ri]).astype(np.int64) - base
            v = self.item_embeddings[idx].mean(0) + self._ctx_emb[c] if idx.size else self._ctx_emb[c]
            out[r] = v / max(float(np.linalg.norm(v)), 1e-12)
        return out

    def context_scorer(self, choice=None):
        """Recency-weighted frequency only (no learned predictor)."""
        return None

    def popular(self, context, n):
        idx = np.arange(self.item_ids.size) if context is None else np.flatnonzero(self.item_contexts == context)
        order = np.lexsort((self.item_ids[idx], -self.popularity[idx]))[:n]
        return self.item_ids[idx[order]]


class SyntheticState:
    """In-memory stand-in for stream.state.StateStore (same read methods)."""

    def __init__(self, bundle: SyntheticBundle, n_users: int = 200, events: int = 300, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.seqs = {}
        n_ctx = len(bundle.context_names) - 1
        for u in range(n_users):
            # skewed context mix per user so weights/quotas differ
            pref = rng.dirichlet(np.full(n_ctx, 0.5))
            ctx = rng.choice(np.arange(1, n_ctx + 1), size=events, p=pref)
            items = np.empty(events, np.int64)
            for c in np.unique(ctx):
                pool = bundle.item_ids[bundle.item_contexts == c]
                m = ctx == c
                items[m] = rng.choice(pool, size=int(m.sum()))
            ts = np.sort(rng.integers(1_700_000_000_000, 1_700_100_000_000, size=events))
            self.seqs[u] = SimpleNamespace(items=items, ts=ts, contexts=ctx.astype(np.int32))

    def _seq(self, u):
        return self.seqs.get(u)

    def recent(self, u, n=1000):
        s = self._seq(u)
        if s is None:
            return None
        return _Seq(s.items[-n:], s.ts[-n:], s.contexts[-n:])

    def context_tail(self, u, c, k):
        s = self._seq(u)
        m = s.contexts == c
        return s.items[m][-k:], s.ts[m][-k:]

    def context_items(self, u, c):
        s = self._seq(u)
        return s.items[s.contexts == c]

    def context_counts(self, u):
        s = self._seq(u)
        return {int(c): int((s.contexts == c).sum()) for c in np.unique(s.contexts)} if s is not None else {}

    def sequence(self, u, c=None):
        s = self._seq(u)
        if s is None:
            return None
        m = np.ones(s.items.size, bool) if c is None else s.contexts == c
        return _Seq(s.items[m], s.ts[m], s.contexts[m])

    def watermark(self):
        return {0: 0}


class _Seq(SimpleNamespace):
    def __init__(self, items, ts, contexts):
        super().__init__(items=items, ts=ts, contexts=contexts)

    def __len__(self):
        return int(self.items.size)


class _ServerThread:
    """grpc.aio server on its own event loop thread."""

    def __init__(self, backend: Any) -> None:
        from longretriever.retriever.server import build_server, set_serving

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
    from longretriever.retriever import query as q
    from longretriever.retriever.client import RetrieverClient
    from longretriever.retriever.milvus_index import MilvusIndex
    from longretriever.retriever.milvus_requests import context_sizes
    from longretriever.retriever.service import RetrieverService

    bundle = SyntheticBundle(items, contexts, dim)
    state = SyntheticState(bundle, n_users=users)
    tmp = None
    if uri is None:
        tmp = tempfile.mkdtemp(prefix="lr_bench_")
        uri = os.path.join(tmp, "milvus.db")
    index_ = MilvusIndex(uri, "bench_items", max_workers=contexts)
    try:
        t0 = time.perf_counter()
        built = index_.build(bundle, index=index, progress=progress)
        build_s = time.perf_counter() - t0
        sizes = context_sizes(bundle.item_contexts)
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
            seq = state.recent(u)
            sel = q.select_contexts(seq.contexts, k, 8, set(sizes))
            tails = {c: state.context_tail(u, c, bundle.config["k"])[0] for c, _, _ in sel}
            plan = q.build_plan(k, sel, seq.items, tails, seq.items, svc.item_context,
                                bundle.config["w"], True, sizes)
            vecs = bundle.encode(*plan.encoder_rows())
            t = time.perf_counter()
            for cq, v in zip(plan.contexts, vecs):
                floor.search(cq.context, v, cq.topk)
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
