"""``longretriever index | query | serve``: bundle + state + Milvus -> answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click
import typer

from longretriever.cli.app import REINDEX_HELP, RESTORE_HELP, STANDBY_HELP, ContextChoice, RestoreMode, app, start_metrics
from longretriever.core.errors import ConfigError
from longretriever.retriever.milvus_requests import DEFAULT_COLLECTION, DEFAULT_URI

MILVUS_HELP = "Milvus Lite file (one process at a time) or http://HOST:19530 for a Milvus server"
COLLECTION_HELP = "Milvus collection of the item vectors"


@app.command("index")
def index_cmd(bundle: Path = typer.Option(..., help="model bundle directory (`train --out`)"),
              milvus_uri: str = typer.Option(DEFAULT_URI, help=MILVUS_HELP),
              collection: str = typer.Option(DEFAULT_COLLECTION, help=COLLECTION_HELP),
              index: str = typer.Option("flat", click_type=click.Choice(["flat", "hnsw", "ivf"]),
                                        help="ANN index (Milvus Lite: flat or ivf)"),
              batch: int = typer.Option(5000, min=1, help="items per upsert request"),
              drop_old_after: float = typer.Option(
                  30.0, min=0, help="Milvus server: seconds between switching the alias to the new "
                  "collection and dropping older versions' collections (serving processes swap "
                  "within their --rollout-poll)")) -> None:
    """Write a bundle's items into Milvus; returns once they are searchable (idempotent).

    On a Milvus server: a new collection per bundle version (one partition per context, index
    built, loaded), then the alias COLLECTION is switched to it; on Milvus Lite: in place."""
    from longretriever.retriever.bundle import load_bundle
    from longretriever.retriever.milvus_index import MilvusIndex

    b = load_bundle(bundle)
    with MilvusIndex(milvus_uri, collection) as ix:
        typer.echo(json.dumps(ix.build(b, index=index, batch=batch, drop_old_after=drop_old_after)))


@app.command("query")
def query_cmd(target: str = typer.Option("127.0.0.1:50051", help="HOST:PORT of `serve`"),
              user: int = typer.Option(..., min=0, help="user id"),
              k: int = typer.Option(100, min=1, max=10_000, help="candidates to return"),
              max_contexts: int = typer.Option(8, min=1, max=64, help="contexts to retrieve from, at most"),
              include_seen: bool = typer.Option(False, help="also return items the user has already seen"),
              timeout: float = typer.Option(5.0, min=0.001, help="deadline of the call, seconds"),
              tls_ca: Optional[Path] = typer.Option(None, help="PEM CA bundle: connect with TLS"),
              items: Optional[Path] = typer.Option(None, help="item table with titles to print: a "
                                                   "MovieLens folder, its movies.csv, or a CSV with "
                                                   "item_id and title columns"),
              as_json: bool = typer.Option(False, "--json", help="print the response as JSON")) -> None:
    """Ask a running endpoint for a user's candidates."""
    from longretriever.retriever.client import RetrieverClient

    titles: dict[int, str] = {}
    if items is not None and not as_json:
        from longretriever.data.events import load_titles

        titles = load_titles(items)
    ca = _read(tls_ca, "--tls-ca") if tls_ca else None
    with RetrieverClient(target, timeout, ca) as c:
        r = c.retrieve(user, k, max_contexts, include_seen=include_seen)
    if as_json:
        typer.echo(json.dumps(r))
        return
    typer.echo(f"user {r['user_id']} model {r['model_version']} watermark {r['watermark'] or '-'}"
               f"{' (fallback: popular items)' if r['fallback'] else ''}")
    for i, cand in enumerate(r["candidates"], 1):
        title = titles.get(cand["item_id"])
        typer.echo(f"{i:5d}  {cand['item_id']:>14d}  {cand['score']:+.4f}  {cand['context']}"
                   + (f"  {title}" if title else ""))


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {flag} {path}: {exc.strerror or exc}") from exc


@app.command("serve")
def serve_cmd(bundle: Path = typer.Option(..., help="model bundle directory (`train --out`)"),
              milvus_uri: str = typer.Option(DEFAULT_URI, help=MILVUS_HELP),
              collection: str = typer.Option(DEFAULT_COLLECTION, help=COLLECTION_HELP + " (`index`ed from the same bundle)"),
              bootstrap: str = typer.Option("127.0.0.1:9092", help="Kafka HOST:PORT[,HOST:PORT...]"),
              state_dir: Path = typer.Option(Path("./state"), help="RocksDB state directory"),
              port: int = typer.Option(50051, min=0, max=65535, help="gRPC port (0: a free one)"),
              host: str = typer.Option("127.0.0.1", help="interface the gRPC endpoint binds (0.0.0.0 "
                                       "exposes it on every interface)"),
              items: Optional[Path] = typer.Option(None, help="item_id,category CSV; must agree with "
                                                   "the bundle's table (default: the bundle's)"),
              cache_entries: int = typer.Option(1_000_000, min=0, help="precomputed vector cache size (0: off)"),
              worker: bool = typer.Option(True, help="also run the stream worker (Kafka -> state); "
                                          "--no-worker serves the state as it is"),
              topic: str = typer.Option("user-events", help="source topic of user events"),
              group_id: str = typer.Option("longretriever-stream", help="Kafka consumer group (serving "
                                           "processes of one deployment share it)"),
              metrics_port: int = typer.Option(0, min=0, max=65535, help="Prometheus /metrics port (0 = off)"),
              metrics_host: str = typer.Option("127.0.0.1", help="interface of the /metrics endpoint "
                                               "(0.0.0.0 exposes it on every interface)"),
              tls_cert: Optional[Path] = typer.Option(None, help="PEM certificate chain: serve TLS "
                                                      "(also LONGRETRIEVER_GRPC_TLS_CERT)"),
              tls_key: Optional[Path] = typer.Option(None, help="PEM private key for --tls-cert "
                                                     "(also LONGRETRIEVER_GRPC_TLS_KEY)"),
              advertise: Optional[str] = typer.Option(None, help="HOST:PORT other serving "
                                                      "processes use to forward requests here "
                                                      "(default 127.0.0.1:PORT)"),
              context_choice: Optional[ContextChoice] = typer.Option(
                  None, help="auto | frequency | learned: how a user's contexts are chosen "
                  "(default: settings, else auto = the bundle's own choice, picked on validation)"),
              rollout_poll: float = typer.Option(
                  5.0, min=0, help="Milvus server: seconds between checks of the alias `index` switches; "
                  "a new bundle version is swapped in between requests (0 = off; SIGHUP checks now)"),
              ef: Optional[int] = typer.Option(None, min=1, help="HNSW search breadth (default: 400, or a "
                                               "partition's rows / 160 when larger; at least the per-context limit)"),
              reindex_contexts: bool = typer.Option(False, help=REINDEX_HELP + " (under the bundle's table)"),
              restore: Optional[RestoreMode] = typer.Option(None, help=RESTORE_HELP),
              standby: Optional[bool] = typer.Option(None, "--standby/--no-standby", help=STANDBY_HELP)) -> None:
    """Stream worker (Kafka -> RocksDB state) + gRPC endpoint in one process."""
    import asyncio

    from longretriever.core.settings import load_settings

    settings = load_settings(bootstrap=bootstrap, state_dir=state_dir, items_path=items, topic=topic,
                             dlq_topic=topic + ".dlq", group_id=group_id,
                             context_choice=context_choice.value if context_choice else None,
                             grpc_tls_cert=tls_cert, grpc_tls_key=tls_key,
                             restore=restore.value if restore else None, standby=standby)
    if settings.standby and settings.restore != "changelog":
        raise ConfigError("--standby follows the changelog: it needs --restore changelog")
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    cert, key = settings.grpc_tls_cert, settings.grpc_tls_key
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    tls = (_read(cert, "--tls-cert"), _read(key, "--tls-key")) if cert and key else None
    if worker:  # an unreachable broker fails here, before the state or Milvus is opened
        from longretriever.stream.replay import ensure_topic

        ensure_topic(settings.bootstrap, settings.topic, security=settings.kafka_security())
    start_metrics(metrics_host, metrics_port)

    def started(bound: int) -> None:
        typer.echo(f"serving gRPC on {host}:{bound}" + ("" if worker else " (no stream worker)")
                   + (f"; metrics on http://{metrics_host}:{metrics_port}/metrics" if metrics_port else ""))

    asyncio.run(_serve(bundle, milvus_uri, collection, settings, port, host, cache_entries, worker,
                       advertise or f"127.0.0.1:{port}", tls, started, rollout_poll, ef, reindex_contexts))


async def _serve(bundle_path: Path, milvus_uri: str, collection: str, settings, port: int, host: str,
                 cache_entries: int, with_worker: bool, advertise: str,
                 tls: tuple[bytes, bytes] | None = None, on_started=None, rollout_poll: float = 5.0,
                 ef: int | None = None, reindex_contexts: bool = False) -> None:
    """The serving process until SIGTERM/SIGINT; a stream worker that fails stops it and its
    error reaches the CLI (one line, exit 2)."""
    import asyncio

    from longretriever.retriever.assemble import open_serving
    from longretriever.retriever.server import serve

    sv = open_serving(bundle_path, milvus_uri, collection, settings, cache_entries, ef=ef,
                      reindex_contexts=reindex_contexts)
    watcher = sv.watch_rollouts(bundle_path, rollout_poll, cache_entries)
    if watcher is not None:
        import signal

        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, watcher.poke)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - not on this OS
            pass
    stop = asyncio.Event()
    router = None
    if with_worker:
        from longretriever.retriever.routing import Router, client_id_for

        router = Router(settings.bootstrap, settings.group_id, settings.topic, advertise,
                        security=settings.kafka_security()).start()
    tasks = [asyncio.create_task(serve(sv.service, host, port, stop=stop, router=router, tls=tls,
                                       on_started=on_started), name="grpc")]
    if with_worker:
        from longretriever.stream.worker import StreamWorker

        worker = StreamWorker(settings, sv.store, client_id=client_id_for(advertise),
                              on_applied=sv.on_applied if sv.refresher else None)
        tasks.append(asyncio.create_task(worker.run(), name="stream-worker"))
    failed: BaseException | None = None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                failed = t.exception()
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
    if failed is not None:
        raise failed
