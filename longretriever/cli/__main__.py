"""``python -m longretriever.cli`` == the ``longretriever`` console script."""

from longretriever.cli import main

main()
