"""Measure Milvus layouts for per-context exact top-k search (results go to docs/milvus.md).

Layouts tried, all with inner-product metric over L2-normalised random vectors:

* ``filter``      one collection, an int64 ``context`` scalar field, ``filter="context == c"``
* ``partition``   one partition per context (``create_partition`` + ``partition_names``)
* ``partkey``     ``context`` declared ``is_partition_key=True`` + the same filter
* ``percoll``     one collection per context (what partitions would give, without partitions)
* ``numpy``       exact per-context matmul over contiguous per-context blocks: the floor

For each Milvus layout and index (FLAT / IVF_FLAT / HNSW) it reports build time, latency of
one multi-context query (M searches of top-k, one per context) issued sequentially and from a
thread pool, and recall@k against the numpy exact answer. Failures (unsupported index, layout
not implemented by Milvus Lite) are recorded, not raised.

Run: ``python -m longretriever.benchmarks.milvus_probe --items 100000 --dim 64 --contexts 8 --topk 200``
or ``longretriever bench milvus-probe``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from longretriever.benchmarks.common import NumpyFloor, percentile



def synthetic(n: int, dim: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids (int64, shuffled raw ids), contexts (int32 in 1..m), L2-normalised vectors."""
    rng = np.random.default_rng(seed)
    vec = rng.standard_normal((n, dim), dtype=np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    ctx = rng.integers(1, m + 1, size=n).astype(np.int32)
    ids = rng.permutation(np.arange(10_000_000, 10_000_000 + n, dtype=np.int64))
    return ids, ctx, vec


def _time_queries(fn: Callable[[int], Any], n: int) -> list[float]:
    fn(0)  # warm-up
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _index_params(client, kind: str):
    ip = client.prepare_index_params()
    if kind == "FLAT":
        ip.add_index("vec", index_type="FLAT", metric_type="IP")
    elif kind == "IVF_FLAT":
        ip.add_index("vec", index_type="IVF_FLAT", metric_type="IP", params={"nlist": 128})
    elif kind == "HNSW":
        ip.add_index("vec", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 200})
    return ip


def _search_params(kind: str, k: int) -> dict:
    if kind == "IVF_FLAT":
        return {"metric_type": "IP", "params": {"nprobe": 16}}
    if kind == "HNSW":
        return {"metric_type": "IP", "params": {"ef": max(2 * k, 256)}}
    return {"metric_type": "IP", "params": {}}


def run_probe(items: int = 100_000, dim: int = 64, contexts: int = 8, topk: int = 200,
              queries: int = 30, indexes: tuple[str, ...] = ("FLAT", "IVF_FLAT", "HNSW"),
              layouts: tuple[str, ...] = ("filter", "partition", "partkey", "percoll"),
              uri: str | None = None, batch: int = 5000, seed: int = 0) -> dict[str, Any]:
    from pymilvus import DataType, MilvusClient

    import pymilvus
    try:
        import milvus_lite
        lite_version = getattr(milvus_lite, "__version__", "?")
    except Exception:  # noqa: BLE001
        lite_version = None
    ids, ctx, vec = synthetic(items, dim, contexts, seed)
    floor = NumpyFloor(ids, ctx, vec)
    rng = np.random.default_rng(seed + 1)
    qv = rng.standard_normal((queries + 1, contexts, dim), dtype=np.float32)
    qv /= np.linalg.norm(qv, axis=2, keepdims=True)
    ctx_ids = list(range(1, contexts + 1))

    exact = {(i, c): np.array([h.item_id for h in floor.search(c, qv[i, c - 1], topk)])
             for i in range(queries + 1) for c in ctx_ids}
    floor_ms = _time_queries(lambda i: [floor.search(c, qv[i, c - 1], topk) for c in ctx_ids], queries)
    results: list[dict[str, Any]] = [{
        "layout": "numpy", "index": "exact", "ok": True, "build_s": 0.0,
        "seq_p50_ms": percentile(floor_ms, .5), "seq_p99_ms": percentile(floor_ms, .99), "recall": 1.0}]

    tmpdir = None
    if uri is None:
        tmpdir = tempfile.mkdtemp(prefix="milvus_probe_")
        uri = os.path.join(tmpdir, "probe.db")
    client = MilvusClient(uri)
    pool = ThreadPoolExecutor(max_workers=contexts)

    def schema(partkey: bool):
        s = MilvusClient.create_schema(auto_id=False, description="milvus_probe")
        s.add_field("id", DataType.INT64, is_primary=True)
        s.add_field("context", DataType.INT64, is_partition_key=partkey)
        s.add_field("vec", DataType.FLOAT_VECTOR, dim=dim)
        return s

    def insert(name: str, sel: np.ndarray, partition: str | None = None) -> None:
        for lo in range(0, sel.size, batch):
            part = sel[lo:lo + batch]
            rows = [{"id": int(i), "context": int(c), "vec": v}
                    for i, c, v in zip(ids[part], ctx[part], vec[part])]
            if partition:
                client.insert(name, rows, partition_name=partition)
            else:
                client.insert(name, rows)

    try:
        for layout in layouts:
            for kind in indexes:
                rec: dict[str, Any] = {"layout": layout, "index": kind, "ok": False}
                results.append(rec)
                names: list[str] = []
                try:
                    t0 = time.perf_counter()
                    sp = _search_params(kind, topk)
                    everything = np.arange(items)
                    if layout in ("filter", "partkey", "partition"):
                        name = f"probe_{layout}_{kind.lower()}"
                        names.append(name)
                        if client.has_collection(name):
                            client.drop_collection(name)
                        kw = {"num_partitions": contexts} if layout == "partkey" else {}
                        client.create_collection(name, schema=schema(layout == "partkey"),
                                                 index_params=_index_params(client, kind), **kw)
                        if layout == "partition":
                            for c in ctx_ids:
                                client.create_partition(name, f"c{c}")
                                insert(name, np.flatnonzero(ctx == c), f"c{c}")
                        else:
                            insert(name, everything)

                        def one(c: int, q: np.ndarray, name=name, layout=layout, sp=sp):
                            if layout == "partition":
                                r = client.search(name, data=[q], anns_field="vec", limit=topk,
                                                  partition_names=[f"c{c}"], search_params=sp)
                            else:
                                r = client.search(name, data=[q], anns_field="vec", limit=topk,
                                                  filter=f"context == {c}", search_params=sp)
                            return np.array([h["id"] for h in r[0]], np.int64)
                    elif layout == "percoll":
                        for c in ctx_ids:
                            name = f"probe_percoll_{kind.lower()}_c{c}"
                            names.append(name)
                            if client.has_collection(name):
                                client.drop_collection(name)
                            client.create_collection(name, schema=schema(False),
                                                     index_params=_index_params(client, kind))
                            insert(name, np.flatnonzero(ctx == c))

                        def one(c: int, q: np.ndarray, kind=kind, sp=sp):
                            r = client.search(f"probe_percoll_{kind.lower()}_c{c}", data=[q],
                                              anns_field="vec", limit=topk, search_params=sp)
                            return np.array([h["id"] for h in r[0]], np.int64)
                    else:
                        raise ValueError(f"unknown layout {layout}")
                    for n in names:
                        client.flush(n)  # seal segments so the vector index is actually built
                    rec["build_s"] = round(time.perf_counter() - t0, 2)

                    seq = _time_queries(lambda i: [one(c, qv[i, c - 1]) for c in ctx_ids], queries)
                    thr = _time_queries(
                        lambda i: list(pool.map(lambda c: one(c, qv[i, c - 1]), ctx_ids)), queries)
                    hits = 0
                    for i in range(queries + 1):
                        for c in ctx_ids:
                            got = one(c, qv[i, c - 1])
                            hits += np.intersect1d(got, exact[(i, c)]).size
                    rec.update(ok=True, seq_p50_ms=percentile(seq, .5), seq_p99_ms=percentile(seq, .99),
                               thr_p50_ms=percentile(thr, .5), thr_p99_ms=percentile(thr, .99),
                               recall=hits / ((queries + 1) * contexts * topk))
                except Exception as exc:  # noqa: BLE001 - record and move on
                    rec["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:240]
                finally:
                    for n in names:
                        try:
                            client.drop_collection(n)
                        except Exception:  # noqa: BLE001
                            pass
    finally:
        pool.shutdown()
        client.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return {"items": items, "dim": dim, "contexts": contexts, "topk": topk, "queries": queries,
            "pymilvus": pymilvus.__version__, "milvus_lite": lite_version, "uri": uri if not tmpdir else "lite-tmp",
            "results": results}


def format_table(report: dict[str, Any]) -> str:
    lines = ["| layout | index | build s | seq p50 ms | seq p99 ms | threaded p50 ms | threaded p99 ms | recall@k | note |",
             "|---|---|---|---|---|---|---|---|---|"]

    def f(x):
        return "" if x is None else (f"{x:.1f}" if isinstance(x, float) else str(x))

    for r in report["results"]:
        lines.append("| " + " | ".join([r["layout"], r["index"], f(r.get("build_s")), f(r.get("seq_p50_ms")),
                                        f(r.get("seq_p99_ms")), f(r.get("thr_p50_ms")), f(r.get("thr_p99_ms")),
                                        f"{r['recall']:.4f}" if "recall" in r else "",
                                        (r.get("error") or "").replace("|", "/")[:120]]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--contexts", type=int, default=8)
    ap.add_argument("--topk", type=int, default=200)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--indexes", default="FLAT,IVF_FLAT,HNSW")
    ap.add_argument("--layouts", default="filter,partition,partkey,percoll")
    ap.add_argument("--uri", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rep = run_probe(a.items, a.dim, a.contexts, a.topk, a.queries, tuple(a.indexes.split(",")),
                    tuple(a.layouts.split(",")), a.uri)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(rep, fh, indent=2)
    print(format_table(rep))


if __name__ == "__main__":
    main()
