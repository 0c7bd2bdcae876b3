"""``longretriever kafka fetch|start|stop|status`` and ``longretriever milvus start|stop|status``."""

from __future__ import annotations

from pathlib import Path

import typer

from longretriever.infra.kafka import broker

DEFAULT_DATA = Path(".kafka-data")
DEFAULT_MILVUS_DATA = Path(".milvus-data")

from longretriever.cli.app import app, fail


kafka = typer.Typer(no_args_is_help=True, help="A local single-node Apache Kafka broker (KRaft).")
app.add_typer(kafka, name="kafka")

@kafka.command("fetch")
def fetch() -> None:
    """Download the pinned Kafka broker jars from Maven Central (idempotent)."""
    typer.echo(broker.fetch_jars())

@kafka.command("start")
def start(port: int = typer.Option(9092, help="Broker port (0 = a free port)."),
          data_dir: Path = typer.Option(DEFAULT_DATA, help="Broker data directory.")) -> None:
    """Format storage (first time) and start the broker in the background."""
    info = broker.start(data_dir, port or None)
    typer.echo(info.bootstrap)

@kafka.command("stop")
def stop(data_dir: Path = typer.Option(DEFAULT_DATA)) -> None:
    """Stop the broker started from DATA_DIR."""
    typer.echo("stopped" if broker.stop(data_dir) else "not running")

@kafka.command("status")
def status(data_dir: Path = typer.Option(DEFAULT_DATA)) -> None:
    """Print the bootstrap address if the broker runs; exit 1 otherwise."""
    info = broker.read_info(data_dir)
    if info and broker.is_alive(info):
        typer.echo(info.bootstrap)
        return
    typer.echo("not running", err=True)
    raise typer.Exit(1)


milvus = typer.Typer(no_args_is_help=True, help="A local Milvus standalone server (the `milvus` package; "
                     "pip install 'longretriever[milvus]').")
app.add_typer(milvus, name="milvus")


@milvus.command("start")
def milvus_start(port: int = typer.Option(0, help="gRPC port (0 = a free port)."),
                 data_dir: Path = typer.Option(DEFAULT_MILVUS_DATA, help="Server data directory (kept).")) -> None:
    """Start the server in the background (data kept in DATA_DIR); prints its URI."""
    from longretriever.core.errors import LongRetrieverError
    from longretriever.infra.milvus import server

    try:
        info = server.start(data_dir, port or None)
    except LongRetrieverError as exc:
        fail(exc)
        return
    typer.echo(info.uri)


@milvus.command("stop")
def milvus_stop(data_dir: Path = typer.Option(DEFAULT_MILVUS_DATA)) -> None:
    """Stop the server started from DATA_DIR (its data stays)."""
    from longretriever.infra.milvus import server

    typer.echo("stopped" if server.stop(data_dir) else "not running")


@milvus.command("status")
def milvus_status(data_dir: Path = typer.Option(DEFAULT_MILVUS_DATA)) -> None:
    """Print the URI if the server runs; exit 1 otherwise."""
    from longretriever.infra.milvus import server

    info = server.read_info(data_dir)
    if info and server.is_alive(info):
        typer.echo(info.uri)
        return
    typer.echo("not running", err=True)
    raise typer.Exit(1)
