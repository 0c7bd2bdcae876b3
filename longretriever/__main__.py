"""``python -m longretriever`` == the ``longretriever`` console script."""

from longretriever.cli import main

main()
