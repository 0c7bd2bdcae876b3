"""The serving half of ``longretriever demo``: train + export a bundle, index it in Milvus Lite,
serve gRPC next to the running stream worker, and show a few users' multi-context answers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from longretriever.data.events import Dataset
from longretriever.core.settings import Settings


def _train(cfg, ds: Dataset, console: Console):
    out = cfg.out / "bundle"
    if ds.name == "ml-latest-small" or (cfg.data is not None and (cfg.data / "ratings.csv").exists()):
        src = ["--events", str(cfg.data), "--format", "movielens"]
    else:
        src = ["--events", str(cfg.out / "synthetic.csv"), "--items", str(cfg.out / "synthetic.items.csv")]
    epochs = "1" if cfg.small else "3"
    console.print(f"training LongRetriever ({epochs} epoch(s)) -> {out}")
    subprocess.run([sys.executable, "-m", "longretriever.cli", "train", *src, "--out", str(out),
                    "--epochs", epochs, "--budget", "16" if cfg.small else "128"], check=True)
    return out


def run_serving_demo(cfg, ds: Dataset, settings: Settings, store, console: Console) -> None:
    from longretriever.retriever.bundle import load_bundle
    from longretriever.retriever.assemble import open_serving
    from longretriever.retriever.milvus_index import MilvusIndex

    bundle_dir = _train(cfg, ds, console)
    uri = str(cfg.out / "milvus.db")
    idx = MilvusIndex(uri, "items")
    info = idx.build(load_bundle(bundle_dir), "flat", progress=True)
    idx.close()
    console.print(f"[green]✓[/] indexed {info.get('items', '?')} items in Milvus Lite ({uri})")
    store.close()  # the serving process reopens the same state (RocksDB allows one writer)
    # the state was built before the bundle existed, with the dataset's own item -> context
    # table; serving uses the bundle's, so the contexts are re-derived once (recorded after)
    sv = open_serving(bundle_dir, uri, "items", settings, reindex_contexts=True)
    try:
        asyncio.run(_serve_and_query(sv, settings, ds, cfg, console))
    finally:
        sv.close()


async def _serve_and_query(sv, settings: Settings, ds: Dataset, cfg, console: Console) -> None:
    from longretriever.retriever.client import RetrieverClient
    from longretriever.retriever.server import build_server
    from longretriever.stream.worker import StreamWorker

    worker = StreamWorker(settings, sv.store, on_applied=sv.on_applied)
    task = asyncio.create_task(worker.run())
    server, port, _ = build_server(sv.service)
    await server.start()
    console.print(f"[green]✓[/] gRPC endpoint on 127.0.0.1:{port} (stream worker live)")
    users = sorted(sv.store.users(), key=lambda u: -sum(sv.store.context_counts(u).values()))[:cfg.users_shown]

    def query():
        out = []
        with RetrieverClient(f"127.0.0.1:{port}", timeout=30) as client:
            for u in users:
                t0 = time.perf_counter()
                r = client.retrieve(u, 20, 4)
                out.append((u, r, (time.perf_counter() - t0) * 1000))
        return out

    try:
        for u, r, ms in await asyncio.to_thread(query):
            _print_answer(u, r, ms, ds, console)
    finally:
        await server.stop(2)
        worker.stop()
        await task


def _print_answer(user: int, r: dict, ms: float, ds: Dataset, console: Console) -> None:
    by_ctx: dict[str, list[str]] = defaultdict(list)
    for c in r["candidates"]:
        by_ctx[c["context"]].append(ds.titles.get(c["item_id"], str(c["item_id"])))
    t = Table(title=f"user {user}: top-20 over {len(by_ctx)} contexts in {ms:.0f} ms "
                    f"(model {r['model_version']}, watermark {r['watermark']})")
    t.add_column("context")
    t.add_column("recommended (best first)")
    for ctx, titles in by_ctx.items():
        t.add_row(ctx, "; ".join(titles[:5]) + (" …" if len(titles) > 5 else ""))
    console.print(t)
