"""``longretriever stream | sequence | replay | synth`` and ``bench ingest``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from longretriever.core.contexts import ContextTable
from longretriever.core.settings import load_settings

FORMAT_HELP = "csv (user_id,item_id,timestamp[,action]; seconds) or movielens (ml-latest folder)"


def open_store(state_dir: Path, items: Optional[Path], read_only: bool = False, restore: Optional[str] = None,
               standby: Optional[bool] = None, **kw):
    from longretriever.stream.state import StateStore

    try:
        s = load_settings(state_dir=state_dir, items_path=items, restore=restore, standby=standby)
    except ValidationError as exc:  # e.g. --restore other
        e = exc.errors()[0]
        raise ConfigError(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}") from exc
    return StateStore(s.state_dir, ContextTable.from_csv(s.items_path), max_len=s.max_sequence_len,
                      segment_events=s.segment_events, late_tolerance_ms=s.late_tolerance_ms,
                      read_only=read_only, **kw), s

from longretriever.cli.app import app, fail
from longretriever.core.errors import ConfigError, LongRetrieverError


@app.command("stream")
def stream_cmd(bootstrap: str = typer.Option(..., help="Kafka HOST:PORT"),
               state_dir: Path = typer.Option(..., help="RocksDB state directory"),
               items: Optional[Path] = typer.Option(None, help="item_id,category CSV"),
               topic: str = typer.Option("user-events"),
               group_id: str = typer.Option("longretriever-stream"),
               until_caught_up: bool = typer.Option(False, help="Exit 0 once the end offsets "
                                                    "that existed at start are processed"),
               metrics_port: int = typer.Option(0, help="Prometheus port (0 = off)"),
               reindex_contexts: bool = typer.Option(False, help="The state was built with another "
                                                     "item -> context table: re-derive every user's "
                                                     "contexts from the stored events (else refused)"),
               restore: Optional[str] = typer.Option(None, help="source | changelog: how a partition this "
                                                     "worker never had is rebuilt (changelog: also publish "
                                                     "every commit to <topic>.state-changelog)"),
               standby: Optional[bool] = typer.Option(None, "--standby/--no-standby",
                                                      help="With --restore changelog: also follow the "
                                                      "changelog of the other partitions (fast failover)"),
               engine: str = typer.Option("bulk", help="bulk (aiokafka getmany) | faust (a faust-streaming "
                                          "agent; needs the [faust] extra)")) -> None:
    """Run the stream worker: user-events -> per-user rolling sequences."""
    from longretriever.stream.replay import ensure_topic
    from longretriever.stream.worker import run_worker

    try:
        store, s = open_store(state_dir, items, reindex_contexts=reindex_contexts, restore=restore, standby=standby)
    except LongRetrieverError as exc:
        fail(exc)
    s = s.model_copy(update={"bootstrap": bootstrap, "topic": topic, "group_id": group_id})
    if engine not in ("bulk", "faust"):
        store.close()
        fail(ConfigError(f"--engine must be bulk or faust, got {engine!r}"))
    if s.standby and s.restore != "changelog":
        store.close()
        fail(ConfigError("--standby follows the changelog: it needs --restore changelog"))
    ensure_topic(s.bootstrap, s.topic, security=s.kafka_security())
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    try:
        if engine == "faust":
            from longretriever.stream.faust_engine import run_faust_worker

            st = run_faust_worker(s, store, until_caught_up=until_caught_up)
        else:
            st = run_worker(s, store, until_caught_up=until_caught_up)
    except LongRetrieverError as exc:
        store.close()
        fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    finally:
        store.close()
    typer.echo(json.dumps({"applied": st.applied, "duplicates": st.duplicates,
                           "dead_lettered": st.dead_lettered, "late": st.late,
                           "messages": st.messages, "seconds": round(st.seconds, 3),
                           "events_per_s": round(st.ingest_eps())}))

@app.command("sequence")
def sequence_cmd(state_dir: Path = typer.Option(...), user: int = typer.Option(...),
                 context: Optional[str] = typer.Option(None, help="Context name or id"),
                 items: Optional[Path] = typer.Option(None, help="item_id,category CSV (for names)"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Print a user's stored sequence (oldest first) from a stopped worker's state."""
    store, _ = open_store(state_dir, items, read_only=True)
    ctx = None
    if context is not None:
        ctx = int(context) if context.isdigit() else store.contexts.id_of(context)
    seq = store.sequence(user, ctx)
    store.close()
    if seq is None:
        typer.echo(f"unknown user {user}", err=True)
        raise typer.Exit(1)
    rows = [{"item_id": i, "ts": t, "context": c}
            for i, t, c in zip(seq.items.tolist(), seq.ts.tolist(), seq.contexts.tolist())]
    if as_json:
        typer.echo(json.dumps({"user_id": user, "events": rows}))
        return
    names = store.contexts.names
    for r in rows:
        typer.echo(f"{r['ts']}\t{r['item_id']}\t{names[r['context']] if r['context'] < len(names) else r['context']}")
    typer.echo(f"{len(rows)} events", err=True)

@app.command("replay")
def replay_cmd(events: Path = typer.Option(..., help="Events CSV or MovieLens folder"),
               bootstrap: str = typer.Option(...),
               items: Optional[Path] = typer.Option(None),
               fmt: str = typer.Option("csv", "--format", help=FORMAT_HELP),
               topic: str = typer.Option("user-events"),
               rate: Optional[float] = typer.Option(None, help="Events per second (default: max)"),
               partitions: int = typer.Option(4, help="Partitions if the topic is created")) -> None:
    """Produce historical events in timestamp order (stable for ties)."""
    from longretriever.data.events import load_dataset
    from longretriever.stream.replay import ensure_topic, replay

    ds = load_dataset(events, items, fmt)  # type: ignore[arg-type]
    s = load_settings(bootstrap=bootstrap)
    ensure_topic(bootstrap, topic, partitions, security=s.kafka_security())
    st = replay(ds.events, bootstrap, topic, rate=rate, security=s.kafka_security())
    typer.echo(f"sent {st.events} events in {st.messages} messages "
               f"({st.events_per_s:,.0f} events/s)")

@app.command("synth")
def synth_cmd(users: int = typer.Option(100), events_per_user: int = typer.Option(10_000),
              items: int = typer.Option(50_000), contexts: int = typer.Option(20),
              seed: int = typer.Option(0), out: Path = typer.Option(...)) -> None:
    """Write a seeded synthetic ultra-long dataset (events CSV + <stem>.items.csv)."""
    from longretriever.data.synth import write

    ev, it = write(out, users, events_per_user, items, contexts, seed)
    typer.echo(f"{ev}\n{it}")
