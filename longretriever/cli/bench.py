"""``longretriever bench ...``: every benchmark writes JSON; the benchmark modules
(:mod:`longretriever.benchmarks`) are imported only when their command runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from longretriever.cli.app import bench_app, fail
from longretriever.core.errors import LongRetrieverError


@bench_app.command("ingest")
def bench_ingest(out: Path = typer.Option(..., help="JSON output file"),
                 users: int = typer.Option(200), events_per_user: int = typer.Option(3000),
                 bootstrap: Optional[str] = typer.Option(None, help="Existing broker "
                                                         "(default: start a local one)"),
                 refresh: bool = typer.Option(True, help="Also measure the worker with the "
                                              "event-driven vector refresh attached"),
                 faust: bool = typer.Option(True, help="Also measure the faust-streaming agent path")) -> None:
    """Ingest benchmark on a real local broker (micro-batched and single-event topics); writes JSON."""
    from longretriever.benchmarks.ingest import run_ingest_bench

    result = run_ingest_bench(users, events_per_user, bootstrap, refresh, faust)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))


@bench_app.command("encoder")
def bench_encoder_cmd(bundle: Path = typer.Option(...), out: Path = typer.Option(...),
                      seq_len: int = 256, threads: int = 2, repeats: int = 30) -> None:
    """Encoder latency at batch 1/8/64: eager torch vs ORT fp32 vs ORT int8 -> JSON."""
    try:
        from longretriever.benchmarks.encoder import bench_encoder

        res = bench_encoder(bundle, out, seq_len, (1, 8, 64), repeats, threads)
    except LongRetrieverError as exc:
        fail(exc)
    typer.echo(json.dumps(res["runs"], indent=1))


@bench_app.command("query")
def bench_query_cmd(out: Path = typer.Option(..., help="JSON output file"),
                    items: str = typer.Option("100000", help="comma-separated item counts, e.g. 100000,1000000"),
                    contexts: int = typer.Option(8), k: int = typer.Option(200),
                    queries: int = typer.Option(100), concurrency: int = typer.Option(4),
                    index: str = typer.Option("flat"),
                    real_path: bool = typer.Option(False, help="Real path instead: RocksDB state filled "
                                                   "through Kafka, a trained ONNX bundle, by history length"),
                    history: str = typer.Option("1000,10000,100000", help="--real-path: events per user, "
                                                "comma-separated"),
                    users_per_length: int = typer.Option(20, help="--real-path: users per history length")) -> None:
    """gRPC + Milvus Lite end-to-end latency on synthetic items (or --real-path)."""
    if real_path:
        from longretriever.benchmarks.query_realpath import run_realpath_query_bench

        r = run_realpath_query_bench(tuple(int(x) for x in history.split(",") if x), users_per_length,
                                     queries, k, contexts)
        out.write_text(json.dumps(r, indent=2))
        typer.echo(json.dumps(r, indent=2))
        return
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


@bench_app.command("restore")
def bench_restore_cmd(out: Path = typer.Option(..., help="JSON output file"),
                      users: int = typer.Option(100), lifetime_events: int = typer.Option(10_000),
                      cap: int = typer.Option(1_000, help="events kept per user")) -> None:
    """Changelog restore vs source replay, ingest with the changelog, failover with/without standby."""
    from longretriever.benchmarks.restore import run_restore_bench

    r = run_restore_bench(users, lifetime_events, cap)
    out.write_text(json.dumps(r, indent=2))
    typer.echo(json.dumps(r, indent=2))
