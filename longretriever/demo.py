"""``longretriever demo``: the whole system on embedded defaults, end to end.

Steps: start a local Kafka broker (KRaft) -> load MovieLens (or generate a synthetic set) ->
replay the events through Kafka -> the stream worker builds per-user state -> print a summary.
Later stages (training, Milvus, gRPC) are chained by :mod:`longretriever.demo_serving` when
those packages are installed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from longretriever.data.events import Dataset, load_dataset
from longretriever.core.settings import Settings

console = Console()


@dataclass(frozen=True)
class DemoConfig:
    data: Path | None
    synthetic: bool
    out: Path
    users_shown: int = 3
    small: bool = False  # CI smoke: fewer synthetic events, fewer epochs


def _dataset(cfg: DemoConfig) -> Dataset:
    if cfg.data is not None and not cfg.synthetic:
        fmt = "movielens" if (cfg.data / "ratings.csv").exists() else "csv"
        return load_dataset(cfg.data, None, fmt)  # type: ignore[arg-type]
    from longretriever.data.synth import write

    users, per_user = (30, 400) if cfg.small else (200, 5000)
    ev, it = write(cfg.out / "synthetic.csv", users, per_user, items=20_000, contexts=12, seed=7)
    return load_dataset(ev, it, "csv")


def run_demo(cfg: DemoConfig) -> None:
    from longretriever.infra.kafka import broker
    from longretriever.stream.replay import ensure_topic, replay
    from longretriever.stream.state import StateStore
    from longretriever.stream.worker import run_worker

    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with console.status("starting Kafka (KRaft)…"):
        info = broker.start(cfg.out / "kafka")
    console.print(f"[green]✓[/] Kafka broker at {info.bootstrap}")
    try:
        ds = _dataset(cfg)
        console.print(f"[green]✓[/] dataset {ds.name}: {len(ds.events):,} events, "
                      f"{ds.events.users().size:,} users, {ds.contexts.num_contexts} contexts")
        topic = f"user-events-{int(time.time())}"
        settings = Settings(bootstrap=info.bootstrap, topic=topic, dlq_topic=topic + ".dlq",
                            group_id=f"demo-{topic}", state_dir=cfg.out / f"state-{topic}")
        ensure_topic(info.bootstrap, topic, 4)
        rep = replay(ds.events, info.bootstrap, topic)
        console.print(f"[green]✓[/] replayed {rep.events:,} events in {rep.messages:,} messages "
                      f"({rep.events_per_s:,.0f} ev/s)")
        store = StateStore(settings.state_dir, ds.contexts)
        st = run_worker(settings, store, until_caught_up=True)
        console.print(f"[green]✓[/] stream worker applied {st.applied:,} events "
                      f"({st.duplicates} duplicates, {st.dead_lettered} dead-lettered) "
                      f"in {st.seconds:.1f}s")
        _print_users(ds, store, cfg.users_shown)
        try:
            from longretriever.demo_serving import run_serving_demo
        except ImportError:
            run_serving_demo = None
        if run_serving_demo is not None:
            run_serving_demo(cfg, ds, settings, store, console)
        store.close()
    finally:
        broker.stop(cfg.out / "kafka")
        console.print(f"[green]✓[/] shut down; total {time.monotonic() - t0:.0f}s")


def _print_users(ds: Dataset, store, n: int) -> None:
    users = sorted(store.users(), key=lambda u: -sum(store.context_counts(u).values()))[:n]
    names = ds.contexts.names
    for u in users:
        counts = store.context_counts(u)
        recent = store.recent(u, 5)
        t = Table(title=f"user {u}: {sum(counts.values()):,} events in {len(counts)} contexts",
                  show_header=True, header_style="bold")
        t.add_column("newest events")
        t.add_column("context")
        for item, ctx in zip(recent.items.tolist()[::-1], recent.contexts.tolist()[::-1]):
            t.add_row(ds.titles.get(item, str(item)), names[ctx])
        console.print(t)
