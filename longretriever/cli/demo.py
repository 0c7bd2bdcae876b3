"""``longretriever demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from longretriever.cli.app import DEFAULT_MOVIELENS, app


@app.command("demo")
def demo(data: Path = typer.Option(DEFAULT_MOVIELENS, help="MovieLens folder or events CSV"),
         synthetic: bool = typer.Option(False, help="Use the synthetic generator instead"),
         out: Path = typer.Option(Path("demo-out"), help="Working directory"),
         small: bool = typer.Option(False, help="A quick smoke run (CI)")) -> None:
    """The whole system on embedded defaults: Kafka -> stream state -> model -> Milvus -> gRPC."""
    from longretriever.demo import DemoConfig, run_demo

    use_data = data if data.exists() and not synthetic else None
    run_demo(DemoConfig(use_data, use_data is None, out, small=small))
