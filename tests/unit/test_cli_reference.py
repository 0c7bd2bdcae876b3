"""docs/cli.md is the CLI's own --help: regenerate it when a command changes."""

from pathlib import Path

from longretriever.docgen import render


def test_cli_reference_matches_help():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    assert doc == render() + "\n", "docs/cli.md is stale: python -m longretriever.docgen > docs/cli.md"
