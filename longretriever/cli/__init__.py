"""The ``longretriever`` console script: thin commands over the layers below (one module per
area registers its commands on :data:`longretriever.cli.app.app`)."""

from __future__ import annotations

import logging
import os

from longretriever.cli import bench, demo, export, infra, retriever, stream  # noqa: F401 - registers commands
from longretriever.cli.app import app


def main() -> None:
    logging.basicConfig(level=os.environ.get("LONGRETRIEVER_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app()


__all__ = ["app", "main"]
