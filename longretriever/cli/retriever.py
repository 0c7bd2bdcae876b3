"""Subcommands of the `retriever` package: index, query, serve, bench query, bench milvus-probe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from longretriever.core.errors import ConfigError
from longretriever.core.multicontext import CONTEXT_CHOICES
from longretriever.retriever.milvus_requests import DEFAULT_COLLECTION, DEFAULT_URI


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add this package's commands to the root CLI."""
    from longretriever.core.errors import LongRetrieverError

    @app.command("index")
    def index_cmd(bundle: Path = typer.Option(..., help="model bundle directory"),
                  milvus_uri: str = typer.Option(DEFAULT_URI, help="Milvus Lite file or http://host:19530"),
                  collection: str = typer.Option(DEFAULT_COLLECTION),
                  index: str = typer.Option("flat", help="flat | hnsw | ivf (Milvus Lite: flat | ivf)"),
                  batch: int = typer.Option(5000, min=1)) -> None:
        """Create / upsert the item collection from a bundle (idempotent)."""
        from longretriever.export.bundle import load_bundle
        from longretriever.retriever.milvus_index import MilvusIndex

        try:
            b = load_bundle(bundle)
            with MilvusIndex(milvus_uri, collection) as ix:
                typer.echo(json.dumps(ix.build(b, index=index, batch=batch)))
        except LongRetrieverError as exc:
            _fail(exc)

    @app.command("query")
    def query_cmd(target: str = typer.Option("127.0.0.1:50051", help="HOST:PORT of `serve`"),
                  user: int = typer.Option(..., help="user id"),
                  k: int = typer.Option(100), max_contexts: int = typer.Option(8),
                  include_seen: bool = typer.Option(False, help="do not exclude seen items"),
                  timeout: float = typer.Option(5.0),
                  tls_ca: Optional[Path] = typer.Option(None, help="PEM CA bundle: connect with TLS"),
                  as_json: bool = typer.Option(False, "--json", help="print the response as JSON")) -> None:
        """Ask a running endpoint for a user's candidates."""
        from longretriever.retriever.client import RetrieverClient

        try:
            with RetrieverClient(target, timeout, tls_ca.read_bytes() if tls_ca else None) as c:
                r = c.retrieve(user, k, max_contexts, not include_seen)
        except (LongRetrieverError, RuntimeError) as exc:
            _fail(exc)
            return
        if as_json:
            typer.echo(json.dumps(r))
            return
        typer.echo(f"user {r['user_id']} model {r['model_version']} watermark {r['watermark'] or '-'}"
                   f"{' (fallback: popular items)' if r['fallback'] else ''}")
        for i, cand in enumerate(r["candidates"], 1):
            typer.echo(f"{i:5d}  {cand['item_id']:>14d}  {cand['score']:+.4f}  {cand['context']}")

    @app.command("serve")
    def serve_cmd(bundle: Path = typer.Option(...),
                  milvus_uri: str = typer.Option(DEFAULT_URI),
                  collection: str = typer.Option(DEFAULT_COLLECTION),
                  bootstrap: str = typer.Option("127.0.0.1:9092", help="Kafka HOST:PORT"),
                  state_dir: Path = typer.Option(Path("./state")),
                  port: int = typer.Option(50051, min=0, max=65535),
                  host: str = typer.Option("0.0.0.0"),
                  items: Optional[Path] = typer.Option(None, help="item_id,category CSV"),
                  cache_entries: int = typer.Option(1_000_000, help="precomputed vector cache size (0: off)"),
                  no_worker: bool = typer.Option(False, help="serve only; do not consume Kafka"),
                  topic: str = typer.Option("user-events"),
                  group_id: str = typer.Option("longretriever-stream"),
                  metrics_port: int = typer.Option(0, help="Prometheus /metrics port (0 = off)"),
                  tls_cert: Optional[Path] = typer.Option(None, help="PEM certificate chain: serve TLS"),
                  tls_key: Optional[Path] = typer.Option(None, help="PEM private key for --tls-cert"),
                  advertise: Optional[str] = typer.Option(None, help="HOST:PORT other serving "
                                                          "processes use to forward requests here "
                                                          "(default 127.0.0.1:PORT)"),
                  context_choice: Optional[str] = typer.Option(
                      None, help="bundle | frequency | learned: how a user's contexts are chosen "
                      "(default: settings, else the bundle's own choice)")) -> None:
        """Stream worker (Kafka -> RocksDB state) + gRPC endpoint in one process."""
        import asyncio

        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
        if (tls_cert is None) != (tls_key is None):
            _fail(ConfigError("--tls-cert and --tls-key go together"))
        if context_choice not in (None, "bundle", *CONTEXT_CHOICES):
            _fail(ConfigError(f"--context-choice must be bundle, frequency or learned, got {context_choice!r}"))
        tls = (tls_cert.read_bytes(), tls_key.read_bytes()) if tls_cert and tls_key else None
        try:
            asyncio.run(_serve(bundle, milvus_uri, collection, bootstrap, state_dir, port, host, items,
                               cache_entries, not no_worker, topic, group_id,
                               advertise or f"127.0.0.1:{port}", tls, context_choice))
        except LongRetrieverError as exc:
            _fail(exc)

    @bench_app.command("query")
    def bench_query_cmd(out: Path = typer.Option(..., help="JSON output file"),
                        items: str = typer.Option("100000", help="comma-separated item counts, e.g. 100000,1000000"),
                        contexts: int = typer.Option(8), k: int = typer.Option(200),
                        queries: int = typer.Option(100), concurrency: int = typer.Option(4),
                        index: str = typer.Option("flat")) -> None:
        """gRPC + Milvus Lite end-to-end latency on synthetic items."""
        from longretriever.benchmarks.query import run_query_bench

        runs = []
        for n in [int(x) for x in items.split(",") if x]:
            r = run_query_bench(n, contexts, k, queries, concurrency=concurrency, index=index)
            typer.echo(json.dumps(r))
            runs.append(r)
            out.write_text(json.dumps({"runs": runs}, indent=2))

    @bench_app.command("freshness")
    def bench_freshness_cmd(out: Path = typer.Option(..., help="JSON output file"),
                            rate: float = typer.Option(5000.0, help="events/s produced"),
                            seconds: float = typer.Option(10.0)) -> None:
        """Produce -> visible in Retrieve latency under a steady event rate (real services)."""
        from longretriever.benchmarks.freshness import run_freshness_bench

        r = run_freshness_bench(rate, seconds)
        out.write_text(json.dumps(r, indent=2))
        typer.echo(json.dumps(r, indent=2))

    @bench_app.command("soak")
    def bench_soak_cmd(out: Path = typer.Option(..., help="JSON output file"),
                       minutes: float = typer.Option(10.0), rate: float = typer.Option(2000.0),
                       qps: float = typer.Option(20.0)) -> None:
        """Steady ingest + steady queries on a real serving process: RSS growth, p99 drift, errors."""
        from longretriever.benchmarks.soak import run_soak

        r = run_soak(minutes, rate, qps)
        out.write_text(json.dumps(r, indent=2))
        typer.echo(json.dumps(r, indent=2))

    @bench_app.command("milvus-probe")
    def bench_probe_cmd(out: Path = typer.Option(...), items: int = typer.Option(100_000),
                        dim: int = typer.Option(64), contexts: int = typer.Option(8),
                        topk: int = typer.Option(200), queries: int = typer.Option(30),
                        indexes: str = typer.Option("FLAT,IVF_FLAT,HNSW"),
                        layouts: str = typer.Option("filter,partition,partkey,percoll"),
                        uri: Optional[str] = typer.Option(None)) -> None:
        """Compare Milvus layouts / indexes for per-context search (docs/milvus.md)."""
        from longretriever.benchmarks.milvus_probe import format_table, run_probe

        rep = run_probe(items, dim, contexts, topk, queries, tuple(indexes.split(",")),
                        tuple(layouts.split(",")), uri)
        out.write_text(json.dumps(rep, indent=2))
        typer.echo(format_table(rep))


async def _serve(bundle_path: Path, milvus_uri: str, collection: str, bootstrap: str, state_dir: Path,
                 port: int, host: str, items: Path | None, cache_entries: int, with_worker: bool,
                 topic: str = "user-events", group_id: str = "longretriever-stream",
                 advertise: str = "127.0.0.1:50051", tls: tuple[bytes, bytes] | None = None,
                 context_choice: str | None = None) -> None:
    import asyncio
    import logging

    from longretriever.core.settings import load_settings
    from longretriever.retriever.assemble import open_serving
    from longretriever.retriever.server import serve

    log = logging.getLogger("longretriever.retriever.serve")
    settings = load_settings(bootstrap=bootstrap, state_dir=state_dir, items_path=items, topic=topic,
                             dlq_topic=topic + ".dlq", group_id=group_id, context_choice=context_choice)
    sv = open_serving(bundle_path, milvus_uri, collection, settings, cache_entries)
    stop = asyncio.Event()
    router = None
    if with_worker:
        from longretriever.retriever.routing import Router, client_id_for

        router = Router(settings.bootstrap, settings.group_id, settings.topic, advertise,
                        security=settings.kafka_security()).start()
    tasks = [asyncio.create_task(serve(sv.service, host, port, stop=stop, router=router, tls=tls),
                                 name="grpc")]
    if with_worker:
        from longretriever.stream.worker import StreamWorker

        worker = StreamWorker(settings, sv.store, client_id=client_id_for(advertise),
                              on_applied=sv.refresher.on_applied if sv.refresher else None)
        tasks.append(asyncio.create_task(worker.run(), name="stream-worker"))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t.exception() is not None and t.get_name() != "grpc":
                log.error("%s stopped: %s", t.get_name(), t.exception())
    finally:
        stop.set()
        for t in tasks:
            if not t.done():
                if t.get_name() == "grpc":
                    await t  # graceful drain
                else:
                    t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if router is not None:
            router.stop()
        sv.close()
