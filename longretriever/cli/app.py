"""The root Typer application and the one error exit shared by every command."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="LongRetriever: streaming multi-context retrieval over ultra-long sequences.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON.")
app.add_typer(bench_app, name="bench")
#: ``../shared/data/ml-latest-small`` next to a checkout (the demo's default data)
DEFAULT_MOVIELENS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-latest-small"


def fail(exc: Exception) -> NoReturn:
    """One line on stderr and exit 2: how every command reports a domain or input error."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)
