"""``longretriever demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from longretriever.cli.app import DEFAULT_MOVIELENS, app
from longretriever.core.errors import ConfigError


@app.command("demo")
def demo(data: Optional[Path] = typer.Option(None, help="MovieLens folder or events CSV (default: "
                                             "../shared/data/ml-latest-small next to the checkout when present, else synthetic)"),
         synthetic: bool = typer.Option(False, help="Use the synthetic generator instead"),
         out: Path = typer.Option(Path("demo-out"), help="Working directory"),
         small: bool = typer.Option(False, help="A quick smoke run (CI)")) -> None:
    """The whole system on embedded defaults: Kafka -> stream state -> model -> Milvus -> gRPC."""
    from longretriever.demo import DemoConfig, run_demo

    if data is not None and synthetic:
        raise ConfigError("--data and --synthetic exclude each other")
    if data is not None and not data.exists():
        raise ConfigError(f"--data {data}: no such file or folder")
    if data is None and not synthetic and DEFAULT_MOVIELENS.is_dir():
        data = DEFAULT_MOVIELENS
    run_demo(DemoConfig(data, data is None, out, small=small))
