"""Subcommands of the `retriever` package: index, query, serve, bench query, bench milvus-probe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from longretriever.core.errors import ConfigError
from longretriever.core.multicontext import CHOICE_OPTIONS
from longretriever.retriever.milvus_requests import DEFAULT_COLLECTION, DEFAULT_URI

from longretriever.cli.app import app, fail


from longretriever.core.errors import LongRetrieverError

@app.command("index")
def index_cmd(bundle: Path = typer.Option(..., help="model bundle directory"),
              milvus_uri: str = typer.Option(DEFAULT_URI, help="Milvus Lite file or http://host:19530"),
              collection: str = typer.Option(DEFAULT_COLLECTION),
              index: str = typer.Option("flat", help="flat | hnsw | ivf (Milvus Lite: flat | ivf)"),
              batch: int = typer.Option(5000, min=1)) -> None:
    """Create / upsert the item collection from a bundle (idempotent)."""
    from longretriever.retriever.bundle import load_bundle
    from longretriever.retriever.milvus_index import MilvusIndex

    try:
        b = load_bundle(bundle)
        with MilvusIndex(milvus_uri, collection) as ix:
            typer.echo(json.dumps(ix.build(b, index=index, batch=batch)))
    except LongRetrieverError as exc:
        fail(exc)

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
        fail(exc)
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
                  None, help="auto | frequency | learned: how a user's contexts are chosen "
                  "(default: settings, else auto = the bundle's own choice, picked on validation)"),
              reindex_contexts: bool = typer.Option(False, help="The state was built with another "
                                                    "item -> context table than the bundle's: re-derive "
                                                    "every user's contexts from the stored events"),
              restore: Optional[str] = typer.Option(None, help="source | changelog (see `stream --restore`)"),
              standby: Optional[bool] = typer.Option(None, "--standby/--no-standby",
                                                     help="With --restore changelog: follow the other "
                                                     "partitions' changelog too")) -> None:
    """Stream worker (Kafka -> RocksDB state) + gRPC endpoint in one process."""
    import asyncio

    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    if (tls_cert is None) != (tls_key is None):
        fail(ConfigError("--tls-cert and --tls-key go together"))
    if context_choice not in (None, *CHOICE_OPTIONS):
        fail(ConfigError(f"--context-choice must be one of {', '.join(CHOICE_OPTIONS)}, got {context_choice!r}"))
    tls = (tls_cert.read_bytes(), tls_key.read_bytes()) if tls_cert and tls_key else None
    try:
        asyncio.run(_serve(bundle, milvus_uri, collection, bootstrap, state_dir, port, host, items,
                           cache_entries, not no_worker, topic, group_id,
                           advertise or f"127.0.0.1:{port}", tls, context_choice, reindex_contexts,
                           {"restore": restore, "standby": standby}))
    except LongRetrieverError as exc:
        fail(exc)


async def _serve(bundle_path: Path, milvus_uri: str, collection: str, bootstrap: str, state_dir: Path,
                 port: int, host: str, items: Path | None, cache_entries: int, with_worker: bool,
                 topic: str = "user-events", group_id: str = "longretriever-stream",
                 advertise: str = "127.0.0.1:50051", tls: tuple[bytes, bytes] | None = None,
                 context_choice: str | None = None, reindex_contexts: bool = False,
                 recovery: dict | None = None) -> None:
    import asyncio
    import logging

    from longretriever.core.settings import load_settings
    from longretriever.retriever.assemble import open_serving
    from longretriever.retriever.server import serve

    log = logging.getLogger("longretriever.retriever.serve")
    settings = load_settings(bootstrap=bootstrap, state_dir=state_dir, items_path=items, topic=topic,
                             dlq_topic=topic + ".dlq", group_id=group_id, context_choice=context_choice,
                             **(recovery or {}))
    sv = open_serving(bundle_path, milvus_uri, collection, settings, cache_entries,
                      reindex_contexts=reindex_contexts)
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
