"""``longretriever stream | sequence | replay | synth``."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from longretriever.cli.app import (FORMAT_HELP, REINDEX_HELP, RESTORE_HELP, STANDBY_HELP, EventFormat,
                                   RestoreMode, app, start_metrics)
from longretriever.core.contexts import ContextTable
from longretriever.core.errors import ConfigError, InputError
from longretriever.core.settings import Settings, load_settings

ITEMS_HELP = "item_id,category CSV: the item -> context table (default: one context)"
TOPIC_HELP = "source topic of user events"
GROUP_HELP = "Kafka consumer group of the stream workers"
METRICS_HOST_HELP = "interface of the /metrics endpoint (0.0.0.0 exposes it on every interface)"


class Engine(str, enum.Enum):
    """``stream --engine``: the consumer loop around the one decode -> stage -> commit path."""

    bulk = "bulk"
    faust = "faust"


def open_store(s: Settings, read_only: bool = False, reindex_contexts: bool = False):
    """The state of ``s.state_dir`` with the context table of ``s.items_path``; read-only
    opens refuse a directory that holds no state (and create nothing). A state built with
    another item -> context table is refused (ConfigError) unless ``reindex_contexts``."""
    from longretriever.stream.state import StateStore

    contexts = ContextTable.from_csv(s.items_path)
    if read_only and not (Path(s.state_dir) / "CURRENT").is_file():
        raise ConfigError(f"no state at {s.state_dir} (check --state-dir; `longretriever stream "
                          "--state-dir DIR` builds one)")
    return StateStore(s.state_dir, contexts, max_len=s.max_sequence_len, segment_events=s.segment_events,
                      late_tolerance_ms=s.late_tolerance_ms, read_only=read_only,
                      reindex_contexts=reindex_contexts)


@app.command("stream")
def stream_cmd(bootstrap: str = typer.Option(..., help="Kafka HOST:PORT[,HOST:PORT...]"),
               state_dir: Path = typer.Option(..., help="RocksDB state directory"),
               items: Optional[Path] = typer.Option(None, help=ITEMS_HELP),
               topic: str = typer.Option("user-events", help=TOPIC_HELP),
               group_id: str = typer.Option("longretriever-stream", help=GROUP_HELP),
               until_caught_up: bool = typer.Option(False, help="Exit 0 once the end offsets "
                                                    "that existed at start are processed"),
               metrics_port: int = typer.Option(0, min=0, max=65535, help="Prometheus /metrics port (0 = off)"),
               metrics_host: str = typer.Option("127.0.0.1", help=METRICS_HOST_HELP),
               reindex_contexts: bool = typer.Option(False, help=REINDEX_HELP),
               restore: Optional[RestoreMode] = typer.Option(None, help=RESTORE_HELP),
               standby: Optional[bool] = typer.Option(None, "--standby/--no-standby", help=STANDBY_HELP),
               engine: Engine = typer.Option(Engine.bulk, help="bulk (aiokafka getmany, the default: "
                                             "measured faster) or faust (a faust-streaming agent; "
                                             "needs the [faust] extra)")) -> None:
    """Run the stream worker: user-events -> per-user rolling sequences."""
    from longretriever.stream.replay import ensure_topic
    from longretriever.stream.worker import run_worker

    s = load_settings(bootstrap=bootstrap, topic=topic, dlq_topic=topic + ".dlq", group_id=group_id,
                      state_dir=state_dir, items_path=items, restore=restore.value if restore else None,
                      standby=standby)
    if s.standby and s.restore != "changelog":
        raise ConfigError("--standby follows the changelog: it needs --restore changelog")
    sys.setswitchinterval(s.gil_switch_interval_ms / 1000)
    ContextTable.from_csv(s.items_path)  # a bad items file fails before anything is created
    ensure_topic(s.bootstrap, s.topic, security=s.kafka_security())  # so does an unreachable broker
    store = open_store(s, reindex_contexts=reindex_contexts)
    try:
        start_metrics(metrics_host, metrics_port)
        if engine is Engine.faust:
            from longretriever.stream.faust_engine import run_faust_worker

            st = run_faust_worker(s, store, until_caught_up=until_caught_up)
        else:
            st = run_worker(s, store, until_caught_up=until_caught_up)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    finally:
        store.close()
    typer.echo(json.dumps({"applied": st.applied, "duplicates": st.duplicates,
                           "dead_lettered": st.dead_lettered, "late": st.late,
                           "messages": st.messages, "seconds": round(st.seconds, 3),
                           "events_per_s": round(st.ingest_eps())}))


@app.command("sequence")
def sequence_cmd(state_dir: Path = typer.Option(..., help="RocksDB state directory of a stopped worker"),
                 user: int = typer.Option(..., min=0, help="user id"),
                 context: Optional[str] = typer.Option(None, help="only this context: its name "
                                                       "(needs --items) or its id"),
                 items: Optional[Path] = typer.Option(None, help="the item_id,category CSV `stream` "
                                                      "used (names the contexts)"),
                 as_json: bool = typer.Option(False, "--json", help="print {user_id, events: "
                                              "[{item_id, ts, context}]} instead of lines")) -> None:
    """Print a user's stored sequence, oldest first: ts (ms since the epoch), item, context."""
    if context is not None and not context.isdigit() and items is None:
        raise ConfigError(f"context {context!r} given by name, but the state's contexts are named "
                          "by the item table: pass the one `stream` used with --items FILE, or give "
                          "the context id")
    store = open_store(load_settings(state_dir=state_dir, items_path=items), read_only=True)
    try:
        ctx = None
        if context is not None:
            ctx = int(context) if context.isdigit() else store.contexts.id_of(context)
        seq = store.sequence(user, ctx)
        names = store.contexts.names
    finally:
        store.close()
    if seq is None:
        raise InputError(f"user {user} has no events in {state_dir}")
    rows = [{"item_id": i, "ts": t, "context": c}
            for i, t, c in zip(seq.items.tolist(), seq.ts.tolist(), seq.contexts.tolist())]
    if as_json:
        typer.echo(json.dumps({"user_id": user, "events": rows}))
        return
    for r in rows:
        typer.echo(f"{r['ts']}\t{r['item_id']}\t{names[r['context']] if r['context'] < len(names) else r['context']}")
    typer.echo(f"{len(rows)} events", err=True)


@app.command("replay")
def replay_cmd(events: Path = typer.Option(..., help="events CSV or MovieLens folder (--format movielens)"),
               bootstrap: str = typer.Option(..., help="Kafka HOST:PORT[,HOST:PORT...]"),
               items: Optional[Path] = typer.Option(None, help="item_id,category CSV (checked, "
                                                    "not sent: events carry no context)"),
               fmt: EventFormat = typer.Option(EventFormat.csv, "--format", help=FORMAT_HELP),
               topic: str = typer.Option("user-events", help=TOPIC_HELP + " (created if missing)"),
               rate: Optional[float] = typer.Option(None, min=0.001, help="events per second (default: as fast as possible)"),
               partitions: int = typer.Option(4, min=1, help="partitions if the topic is created")) -> None:
    """Produce historical events in timestamp order (stable for ties)."""
    from longretriever.data.events import load_dataset
    from longretriever.stream.replay import ensure_topic, replay

    s = load_settings(bootstrap=bootstrap, topic=topic)
    ds = load_dataset(events, items, fmt.value)
    ensure_topic(s.bootstrap, topic, partitions, security=s.kafka_security())
    st = replay(ds.events, s.bootstrap, topic, rate=rate, security=s.kafka_security())
    typer.echo(f"sent {st.events} events in {st.messages} messages "
               f"({st.events_per_s:,.0f} events/s)")


@app.command("synth")
def synth_cmd(users: int = typer.Option(100, min=1, help="users"),
              events_per_user: int = typer.Option(10_000, min=1, help="events per user (the maximum "
                                                  "with --min-events-per-user)"),
              min_events_per_user: Optional[int] = typer.Option(
                  None, min=1, help="spread history lengths log-uniformly from this many events up "
                  "to --events-per-user"),
              items: int = typer.Option(50_000, min=1, help="items in the catalogue (>= --contexts)"),
              contexts: int = typer.Option(20, min=1, help="contexts (item categories c00, c01, ...)"),
              seed: int = typer.Option(0, help="random seed (the output is deterministic per seed)"),
              drift: float = typer.Option(0.25, min=0.0, max=10.0, help="taste random-walk step of every "
                                          "interest at each era change (0: a stable taste for life)"),
              out: Path = typer.Option(..., help="events CSV to write; the item table goes next to "
                                       "it as <stem>.items.csv, the generator's truth as "
                                       "<stem>.truth.npz")) -> None:
    """Write a seeded synthetic ultra-long dataset (events CSV, <stem>.items.csv, and the
    generator's truth <stem>.truth.npz that `eval` turns into the oracle row)."""
    from longretriever.data.synth import write

    if items < contexts:
        raise ConfigError(f"--items ({items}) must be >= --contexts ({contexts}): every category needs an item")
    if min_events_per_user is not None and min_events_per_user > events_per_user:
        raise ConfigError(f"--min-events-per-user ({min_events_per_user}) must be <= --events-per-user "
                          f"({events_per_user})")
    ev, it = write(out, users, events_per_user, items, contexts, seed, min_events_per_user, drift)
    typer.echo(f"{ev}\n{it}")
