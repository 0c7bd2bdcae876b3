"""``longretriever kafka fetch|start|stop|status`` and ``longretriever milvus start|stop|status``."""

from __future__ import annotations

from pathlib import Path

import typer

from longretriever.cli.app import app
from longretriever.infra.kafka import broker

DEFAULT_DATA = Path(".kafka-data")
DEFAULT_MILVUS_DATA = Path(".milvus-data")


kafka = typer.Typer(no_args_is_help=True, help="A local single-node Apache Kafka broker (KRaft).")
app.add_typer(kafka, name="kafka")


@kafka.command("fetch")
def fetch() -> None:
    """Download the pinned Kafka broker jars from Maven Central (idempotent)."""
    typer.echo(broker.fetch_jars())


@kafka.command("start")
def start(port: int = typer.Option(9092, min=0, max=65535, help="Broker port on 127.0.0.1 (0 = a free port)."),
          data_dir: Path = typer.Option(DEFAULT_DATA, help="Broker data directory.")) -> None:
    """Format storage (first time) and start the broker in the background."""
    info = broker.start(data_dir, port or None)
    typer.echo(info.bootstrap)


@kafka.command("stop")
def stop(data_dir: Path = typer.Option(DEFAULT_DATA, help="Broker data directory (as given to start).")) -> None:
    """Stop the broker started from DATA_DIR."""
    typer.echo("stopped" if broker.stop(data_dir) else "not running")


@kafka.command("status")
def status(data_dir: Path = typer.Option(DEFAULT_DATA, help="Broker data directory (as given to start).")) -> None:
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
def milvus_start(port: int = typer.Option(0, min=0, max=65535, help="gRPC port on 127.0.0.1 (0 = a free port)."),
                 data_dir: Path = typer.Option(DEFAULT_MILVUS_DATA, help="Server data directory (kept).")) -> None:
    """Start the server in the background (data kept in DATA_DIR); prints its URI."""
    from longretriever.infra.milvus import server

    typer.echo(server.start(data_dir, port or None).uri)


@milvus.command("stop")
def milvus_stop(data_dir: Path = typer.Option(DEFAULT_MILVUS_DATA, help="Server data directory (as given to start).")) -> None:
    """Stop the server started from DATA_DIR (its data stays)."""
    from longretriever.infra.milvus import server

    typer.echo("stopped" if server.stop(data_dir) else "not running")


@milvus.command("status")
def milvus_status(data_dir: Path = typer.Option(DEFAULT_MILVUS_DATA, help="Server data directory (as given to start).")) -> None:
    """Print the URI if the server runs; exit 1 otherwise."""
    from longretriever.infra.milvus import server

    info = server.read_info(data_dir)
    if info and server.is_alive(info):
        typer.echo(info.uri)
        return
    typer.echo("not running", err=True)
    raise typer.Exit(1)
