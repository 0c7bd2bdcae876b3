"""The ``longretriever`` console script: thin commands over the layers below (one module per
area registers its commands on :data:`longretriever.cli.app.app`); :func:`longretriever.cli.app.run`
is the one error path around all of them."""

from __future__ import annotations

from longretriever.cli import bench, demo, export, infra, retriever, stream  # noqa: F401 - registers commands
from longretriever.cli.app import app, run


def main() -> None:
    run()


__all__ = ["app", "main"]
