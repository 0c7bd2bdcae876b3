"""The root Typer application and the one error path shared by every command.

Every command runs through :func:`run` (the console script and ``python -m longretriever.cli``):
a domain, configuration, settings, usage or connection error prints one line
``error: <what> (<hint>)`` on stderr and exits 2; anything else is a bug and prints one line
too (exit 1). ``--debug`` (before the command) or ``LONGRETRIEVER_DEBUG=1`` shows the
traceback instead. Commands only raise: they never print errors or choose exit codes for them.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import sys
import traceback
from pathlib import Path
from typing import NoReturn, Sequence

import click
import typer

from longretriever.cli import logs
from longretriever.core.errors import ConfigError, LongRetrieverError
from longretriever.core.multicontext import CHOICE_OPTIONS

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="LongRetriever: streaming multi-context retrieval over ultra-long sequences.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON.")
app.add_typer(bench_app, name="bench")
#: ``../shared/data/ml-latest-small`` next to a checkout (the demo's default data)
DEFAULT_MOVIELENS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-latest-small"
DEBUG_ENV = "LONGRETRIEVER_DEBUG"
EXIT_INPUT = 2  # bad input, configuration or an unreachable service: fix and retry
EXIT_BUG = 1  # an unexpected exception
_debug = False


class EventFormat(str, enum.Enum):
    """``--format`` of event files (:data:`longretriever.data.events.Format`)."""

    csv = "csv"
    movielens = "movielens"


#: ``--context-choice`` (:data:`longretriever.core.multicontext.CHOICE_OPTIONS`)
ContextChoice = enum.Enum("ContextChoice", {c: c for c in CHOICE_OPTIONS}, type=str)

class RestoreMode(str, enum.Enum):
    """``--restore`` (:attr:`longretriever.core.settings.Settings.restore`)."""

    source = "source"
    changelog = "changelog"


RESTORE_HELP = ("how a partition this worker never had is rebuilt: source (replay the source "
                "topic) or changelog (also publish every commit to <topic>.state-changelog and "
                "restore from it); default: settings, else source")
STANDBY_HELP = ("with --restore changelog: also follow the changelog of the partitions this "
                "worker does not own (a failover is a short delta restore)")
REINDEX_HELP = ("the state was built with another item -> context table: re-derive every user's "
                "contexts from the stored events (without it such a state is refused)")
FORMAT_HELP = ("csv: header user_id,item_id,timestamp[,action], timestamp in seconds; "
               "movielens: an ml-latest folder (ratings.csv + movies.csv)")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error "
                                     "(also LONGRETRIEVER_DEBUG=1).")) -> None:
    global _debug
    _debug = _debug or debug
    if _debug:
        logs.show_all()


def fail(exc: Exception) -> NoReturn:
    """Raise ``exc`` into the one error path (kept for commands written before :func:`run`)."""
    raise exc if isinstance(exc, LongRetrieverError) else ConfigError(str(exc))


def start_metrics(host: str, port: int) -> None:
    """The Prometheus /metrics endpoint on ``host:port`` (port 0: none)."""
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} "
                          "(choose another --metrics-port)") from exc


# ---- the one error path ------------------------------------------------------------------
def one_line(text: str, limit: int = 600) -> str:
    text = re.sub(r"\s*\n\s*", "; ", str(text).strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _third_party(exc: BaseException) -> str | None:
    """A short name of the dependency whose error this is (Kafka, Milvus, gRPC), if any.
    Looks only at modules already imported: never loads a client library to classify."""
    kinds = (("kafka.errors", "KafkaError", "Kafka"), ("aiokafka.errors", "KafkaError", "Kafka"),
             ("pymilvus.exceptions", "MilvusException", "Milvus"), ("grpc", "RpcError", "gRPC"))
    for module, name, label in kinds:
        mod = sys.modules.get(module)
        if mod is not None and isinstance(exc, getattr(mod, name, ())):
            return label
    return None


def _validation_message(exc: BaseException) -> str:
    errors = exc.errors()  # type: ignore[attr-defined]
    first = errors[0] if errors else {}
    key = ".".join(str(p) for p in first.get("loc", ())) or "?"
    more = f"; and {len(errors) - 1} more" if len(errors) > 1 else ""
    if first.get("type") == "extra_forbidden":
        return (f"unknown setting {key!r}{more} (the keys are listed in docs/configuration.md; "
                "check the file named by LONGRETRIEVER_CONFIG)")
    env = f"LONGRETRIEVER_{key.upper()}"
    value = first.get("input")
    return (f"invalid setting {key}={value!r}: {first.get('msg', 'invalid')}{more} "
            f"(set by a flag, {env} or the LONGRETRIEVER_CONFIG file; see docs/configuration.md)")


def describe(exc: BaseException) -> tuple[str, int]:
    """The one line and the exit code for an exception that reached the top of a command."""
    from pydantic import ValidationError

    if isinstance(exc, LongRetrieverError):
        return str(exc), EXIT_INPUT
    if isinstance(exc, ValidationError):
        return _validation_message(exc), EXIT_INPUT
    label = _third_party(exc)
    if label == "gRPC":
        code = exc.code() if hasattr(exc, "code") else None  # type: ignore[attr-defined]
        details = exc.details() if hasattr(exc, "details") else exc  # type: ignore[attr-defined]
        return f"gRPC {getattr(code, 'name', 'error')}: {details}", EXIT_INPUT
    if label is not None:
        return (f"{label} error: {type(exc).__name__}: {exc} (is the {label} service running "
                "and reachable?)"), EXIT_INPUT
    if isinstance(exc, ConnectionError):
        return f"cannot connect: {exc.strerror or exc} (is the service running?)", EXIT_INPUT
    if isinstance(exc, OSError):
        if exc.errno == errno.EADDRINUSE:
            return f"address already in use: {exc} (choose another port)", EXIT_INPUT
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", EXIT_INPUT
    return (f"unexpected {type(exc).__name__}: {exc} (a bug: rerun with --debug or "
            f"{DEBUG_ENV}=1 for the traceback, and report it)"), EXIT_BUG


def debug_enabled() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _exit(message: str, code: int) -> NoReturn:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def run(args: Sequence[str] | None = None) -> NoReturn:
    """The console script: parse, run the command, and map whatever it raises (see the module
    docstring). Usage errors are one line too, with a pointer to the command's ``--help``."""
    try:
        logs.configure(debug_enabled())
        rc = app(args=args, prog_name=None, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(EXIT_INPUT)  # the help was printed already
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "longretriever"
        _exit(f"{exc.format_message()} (see '{where} --help')", exc.exit_code)
    except click.Abort:
        _exit("aborted", 130)
    except click.ClickException as exc:
        _exit(exc.format_message(), exc.exit_code)
    except KeyboardInterrupt:
        _exit("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the one place that maps everything
        if debug_enabled():
            traceback.print_exc()
        message, code = describe(exc)
        _exit(message, code)
    sys.exit(rc if isinstance(rc, int) else 0)
