"""The ``longretriever`` console script. Each package registers its own subcommands."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="LongRetriever: streaming multi-context retrieval over ultra-long sequences.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON.")
app.add_typer(bench_app, name="bench")
DEFAULT_MOVIELENS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-latest-small"


@app.command("demo")
def demo(data: Path = typer.Option(DEFAULT_MOVIELENS, help="MovieLens folder or events CSV"),
         synthetic: bool = typer.Option(False, help="Use the synthetic generator instead"),
         out: Path = typer.Option(Path("demo-out"), help="Working directory"),
         small: bool = typer.Option(False, help="A quick smoke run (CI)")) -> None:
    """The whole system on embedded defaults: Kafka -> stream state -> model -> Milvus -> gRPC."""
    from longretriever.demo import DemoConfig, run_demo

    use_data = data if data.exists() and not synthetic else None
    run_demo(DemoConfig(use_data, use_data is None, out, small=small))


def _register() -> None:
    from longretriever.cli.export import register as register_export
    from longretriever.cli.infra import register as register_infra
    from longretriever.cli.retriever import register as register_retriever
    from longretriever.cli.stream import register as register_stream

    for register in (register_infra, register_stream, register_export, register_retriever):
        register(app, bench_app)


def main() -> None:
    logging.basicConfig(level=os.environ.get("LONGRETRIEVER_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _register()
    app()


if __name__ == "__main__":
    main()
