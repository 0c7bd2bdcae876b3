"""docs/cli.md is the CLI's own --help: regenerate it when a command changes."""

from pathlib import Path

from longretriever.docgen import render


def _stable(text: str) -> list[str]:
    """Drop the lines that show the demo's default data path, which depends on where the
    repository is checked out (``../shared`` next to it)."""
    return [line for line in text.rstrip("\n").splitlines() if "/shared/data/" not in line]


def test_cli_reference_matches_help():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    assert _stable(doc) == _stable(render()), "docs/cli.md is stale: python -m longretriever.docgen > docs/cli.md"
