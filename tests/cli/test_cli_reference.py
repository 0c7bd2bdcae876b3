"""docs/cli.md is the CLI's own --help and docs/configuration.md the settings model: regenerate
them when a command or a setting changes; every option and every setting has help text."""

from pathlib import Path

import click
import typer

from longretriever.core.settings import Settings
from longretriever.docgen import render, render_configuration

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _stable(text: str) -> list[str]:
    """Drop the lines that show the demo's default data path, which depends on where the
    repository is checked out (``../shared`` next to it)."""
    return [line for line in text.rstrip("\n").splitlines() if "/shared/data/" not in line]


def test_cli_reference_matches_help():
    doc = (DOCS / "cli.md").read_text()
    assert _stable(doc) == _stable(render()), "docs/cli.md is stale: python -m longretriever.docgen > docs/cli.md"


def test_configuration_reference_matches_settings():
    doc = (DOCS / "configuration.md").read_text()
    assert doc.rstrip("\n") == render_configuration().rstrip("\n"), \
        "docs/configuration.md is stale: python -m longretriever.docgen config > docs/configuration.md"
    for name in Settings.model_fields:
        assert f"`LONGRETRIEVER_{name.upper()}`" in doc


def test_every_setting_has_a_description():
    missing = [n for n, f in Settings.model_fields.items() if not (f.description or "").strip()]
    assert missing == [], f"settings without a description (docs/configuration.md): {missing}"


def _commands(cmd: click.Command, path: tuple[str, ...] = ()):
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            yield from _commands(cmd.get_command(ctx, name), path + (name,))
    else:
        yield path, cmd


def test_every_option_has_help_and_no_double_negative_flags():
    from longretriever.cli import app

    root = typer.main.get_command(app)
    no_help, double_neg = [], []
    for path, cmd in _commands(root):
        assert (cmd.help or "").strip(), f"{' '.join(path)} has no docstring"
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.hidden:
                continue
            if not (p.help or "").strip():
                no_help.append(f"{' '.join(path)} {p.opts[0]}")
            if any(o.startswith("--no-no-") for o in p.opts + p.secondary_opts):
                double_neg.append(f"{' '.join(path)} {p.opts[0]}")
    assert no_help == [], f"options without help text: {no_help}"
    assert double_neg == [], f"double-negative flags: {double_neg}"
