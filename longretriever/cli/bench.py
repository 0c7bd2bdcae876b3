"""``longretriever bench ...``: every benchmark writes JSON; the benchmark modules
(:mod:`longretriever.benchmarks`) are imported only when their command runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click
import typer

from longretriever.cli.app import bench_app
from longretriever.core.errors import InputError


@bench_app.command("ingest")
def bench_ingest(out: Path = typer.Option(..., help="JSON output file"),
                 users: int = typer.Option(200, min=1, help="synthetic users"),
                 events_per_user: int = typer.Option(3000, min=1, help="synthetic events per user"),
                 bootstrap: Optional[str] = typer.Option(None, help="Existing broker "
                                                         "(default: start a local one)"),
                 refresh: bool = typer.Option(True, help="Also measure the worker with the "
                                              "event-driven vector refresh attached"),
                 faust: bool = typer.Option(True, help="Also measure the faust engine (both topics) "
                                            "and the bare faust-streaming agent path")) -> None:
    """Ingest benchmark on a real local broker (micro-batched and single-event topics); writes JSON."""
    from longretriever.benchmarks.ingest import run_ingest_bench

    result = run_ingest_bench(users, events_per_user, bootstrap, refresh, faust)
    out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))


@bench_app.command("encoder")
def bench_encoder_cmd(bundle: Path = typer.Option(..., help="model bundle directory (`train --out`)"),
                      out: Path = typer.Option(..., help="JSON output file"),
                      seq_len: int = typer.Option(256, min=1, help="searched events per encoder row"),
                      threads: int = typer.Option(2, min=1, help="intra-op threads of torch and onnxruntime"),
                      repeats: int = typer.Option(30, min=1, help="timed calls per batch size (median reported)")) -> None:
    """Encoder latency at batch 1/8/64: eager torch vs ORT fp32 vs ORT int8 -> JSON."""
    from longretriever.benchmarks.encoder import bench_encoder

    res = bench_encoder(bundle, out, seq_len, (1, 8, 64), repeats, threads)
    typer.echo(json.dumps(res["runs"], indent=1))


@bench_app.command("query")
def bench_query_cmd(out: Path = typer.Option(..., help="JSON output file"),
                    items: str = typer.Option("", help="comma-separated item counts, e.g. 100000,1000000 "
                                              "[default: 100000; --real-path: 1000000, so that a 10^5-event "
                                              "user has not consumed whole contexts]"),
                    contexts: int = typer.Option(8, min=1, help="contexts of the synthetic catalogue"),
                    k: int = typer.Option(200, min=1, max=10_000, help="candidates per query"),
                    queries: int = typer.Option(100, min=1, help="timed queries per item count"),
                    concurrency: int = typer.Option(4, min=1, help="concurrent gRPC clients"),
                    index: str = typer.Option("flat", click_type=click.Choice(["flat", "hnsw", "ivf"]),
                                              help="Milvus index (Milvus Lite: flat or ivf)"),
                    backend: str = typer.Option("lite", click_type=click.Choice(["lite", "server"]),
                                                help="lite (a Milvus Lite file) | server (a private Milvus "
                                                "server started for the run)"),
                    ef: str = typer.Option("", help="HNSW: comma-separated ef values, one run each; "
                                  "0 = the serving default (400, or a partition's rows / 160 when larger)"),
                    load_levels: str = typer.Option("1,2,4,8,16", help="closed-loop load concurrencies"),
                    load_seconds: float = typer.Option(4.0, min=0.5, help="seconds per load level"),
                    real_path: bool = typer.Option(False, help="the real path instead: RocksDB state filled "
                                                   "through Kafka, a trained ONNX bundle, Milvus Lite, "
                                                   "gRPC, by history length (uses --items, --k, --contexts, --queries)"),
                    history: str = typer.Option("1000,10000,100000", help="--real-path: events per user, "
                                                "comma-separated"),
                    users_per_length: int = typer.Option(20, min=1, help="--real-path: users per history "
                                                         "length"),
                    min_slots: int = typer.Option(0, min=0, help="adaptive contexts: skip contexts that would "
                                                  "fill fewer answer slots (0 = search every chosen context)")
                    ) -> None:
    """gRPC + Milvus end-to-end latency, recall vs exact and QPS at p99 <= 50 ms on synthetic
    items; or (--real-path) latency and stage times by history length on the real path."""
    if real_path:
        from longretriever.benchmarks.query_realpath import run_realpath_query_bench

        sizes = [int(x) for x in (items or "1000000").split(",") if x]
        if len(sizes) != 1:
            raise InputError("--real-path takes one item count (--items N)")
        r = run_realpath_query_bench(tuple(int(x) for x in history.split(",") if x), users_per_length,
                                     queries, k, items=sizes[0], contexts=contexts)
        out.write_text(json.dumps(r, indent=2))
        typer.echo(json.dumps(r, indent=2))
        return
    from longretriever.benchmarks.query import run_query_bench

    efs = tuple(int(x) or None for x in ef.split(",") if x) or (None,)
    levels = tuple(int(x) for x in load_levels.split(",") if x)
    runs = []
    for n in [int(x) for x in (items or "100000").split(",") if x]:
        for r in run_query_bench(n, contexts, k, queries, concurrency=concurrency, index=index,
                                 backend=backend, efs=efs, load_levels=levels, load_seconds=load_seconds,
                                 min_slots=min_slots):
            typer.echo(json.dumps({key: v for key, v in r.items() if key != "load"}))
            runs.append(r)
            out.write_text(json.dumps({"runs": runs}, indent=2))



@bench_app.command("freshness")
def bench_freshness_cmd(out: Path = typer.Option(..., help="JSON output file"),
                        rate: float = typer.Option(5000.0, help="events/s produced"),
                        seconds: float = typer.Option(10.0, min=0.1, help="how long events are produced")) -> None:
    """Produce -> visible in Retrieve latency under a steady event rate (real services)."""
    from longretriever.benchmarks.freshness import run_freshness_bench

    r = run_freshness_bench(rate, seconds)
    out.write_text(json.dumps(r, indent=2))
    typer.echo(json.dumps(r, indent=2))



@bench_app.command("soak")
def bench_soak_cmd(out: Path = typer.Option(..., help="JSON output file"),
                   minutes: float = typer.Option(10.0, min=0.01, help="duration"),
                   rate: float = typer.Option(2000.0, min=0.001, help="events/s produced"),
                   qps: float = typer.Option(20.0, min=0.001, help="queries/s attempted")) -> None:
    """Steady ingest + steady queries on a real serving process: RSS growth, p99 drift, errors."""
    from longretriever.benchmarks.soak import run_soak

    r = run_soak(minutes, rate, qps)
    out.write_text(json.dumps(r, indent=2))
    typer.echo(json.dumps(r, indent=2))



@bench_app.command("milvus-probe")
def bench_probe_cmd(out: Path = typer.Option(..., help="JSON output file"),
                    items: int = typer.Option(100_000, min=1, help="random items"),
                    dim: int = typer.Option(64, min=1, help="vector dimension"),
                    contexts: int = typer.Option(8, min=1, help="contexts the items are spread over"),
                    topk: int = typer.Option(200, min=1, help="results per per-context search"),
                    queries: int = typer.Option(30, min=1, help="timed queries per layout and index"),
                    indexes: str = typer.Option("FLAT,IVF_FLAT,HNSW", help="comma-separated Milvus index types"),
                    layouts: str = typer.Option("filter,partition,partkey,percoll", help="comma-separated "
                                                "layouts: one collection + filter, partitions, a "
                                                "partition key, a collection per context"),
                    uri: Optional[str] = typer.Option(None, help="Milvus URI (default: a temporary "
                                                      "Milvus Lite file)")) -> None:
    """Compare Milvus layouts / indexes for per-context search (docs/milvus.md)."""
    from longretriever.benchmarks.milvus_probe import format_table, run_probe

    rep = run_probe(items, dim, contexts, topk, queries, tuple(indexes.split(",")),
                    tuple(layouts.split(",")), uri)
    out.write_text(json.dumps(rep, indent=2))
    typer.echo(format_table(rep))


@bench_app.command("restore")
def bench_restore_cmd(out: Path = typer.Option(..., help="JSON output file"),
                      users: int = typer.Option(100, min=1, help="synthetic users"),
                      lifetime_events: int = typer.Option(10_000, min=1, help="events produced per user "
                                                          "(the source history)"),
                      cap: int = typer.Option(1_000, min=1, help="events kept per user (the state)")) -> None:
    """Changelog restore vs source replay, ingest with the changelog, failover with/without standby."""
    from longretriever.benchmarks.restore import run_restore_bench

    r = run_restore_bench(users, lifetime_events, cap)
    out.write_text(json.dumps(r, indent=2))
    typer.echo(json.dumps(r, indent=2))
