"""The ``longretriever`` console script. Each package registers its own subcommands."""

from __future__ import annotations

import logging
import os

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="LongRetriever: streaming multi-context retrieval over ultra-long sequences.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON.")
app.add_typer(bench_app, name="bench")


def _register() -> None:
    from export.cli import register as register_export
    from infra.cli import register as register_infra
    from retriever.cli import register as register_retriever
    from stream.cli import register as register_stream

    for register in (register_infra, register_stream, register_export, register_retriever):
        register(app, bench_app)


def main() -> None:
    logging.basicConfig(level=os.environ.get("LONGRETRIEVER_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _register()
    app()


if __name__ == "__main__":
    main()
