"""``longretriever bench ingest``: ingest rates on a real local broker, measured in one run.

The same synthetic events are produced twice: as per-user micro-batches (``stream.replay``)
and as single-event messages (one event map per message, keyed by user: what real producers
send). On each topic:

- ``*raw*_eps``: the reference -- aiokafka ``getmany`` + msgpack decode, nothing else
- ``*worker*_eps``: the stream worker (decode + validate + RocksDB apply + offsets), in-process

and on the micro-batched topic also:

- ``resent_worker_eps``: the whole history produced again into the same topic and consumed by
  the worker on top of its state (every event a duplicate; ``resent_vs_first`` vs
  ``worker_eps``). Run last, so that every other pass reads the history once (before, the
  changelog, faust and backfill passes ran after it and also read the re-sent copy)
- ``worker_eps_changelog``: the worker publishing every commit to the changelog (a transaction
  per batch, ``--restore changelog``; ``changelog_vs_plain`` vs ``worker_eps``), and
  ``single_event_worker_eps_changelog`` / ``single_event_changelog_vs_plain`` on the other topic
- ``faust_engine_eps`` / ``single_event_faust_engine_eps``: the faust engine (the same state
  path as a faust-streaming agent, ``stream --engine faust``) on both topics
- ``backfill_eps``: ``longretriever stream --until-caught-up`` as a whole process (startup incl.)
- ``faust_agent_eps``: the faust-streaming agent path (``stream.take``), decode only
- ``worker_with_refresh_eps``: the worker with the event-driven vector refresh attached
- ``bytes_per_event``: state bytes (segments, meta, seen-item index; keys included) per event
- ``one_event_stage_us`` / ``one_event_commit_us``: CPU per event when every user has exactly
  one event per batch (``benchmarks.one_event``, on the single-event pass's state: the shape of
  a stream with many users; the backlog topic holds hundreds per user and fetch), and
  ``one_event_vs_backlog``: their sum against the single-event pass's wall time per message

``loadavg`` (1/5/15 min at the start and end) shows how busy the shared box was.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np

from longretriever.benchmarks.common import train_small
from longretriever.benchmarks.one_event import one_event_write
from longretriever.core.settings import Settings
from longretriever.data.events import load_dataset
from longretriever.data.synth import write as write_synth
from longretriever.stream.replay import ensure_topic, replay
from longretriever.stream.state import StateStore
from longretriever.stream.worker import StreamWorker


async def _raw_consume(bootstrap: str, topic: str, total: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1_048_576,
                         fetch_max_bytes=64 * 1_048_576)
    await c.start()
    await c.topics()
    c.assign([TopicPartition(topic, p) for p in c.partitions_for_topic(topic)])
    n = 0
    t0 = time.perf_counter()  # same convention as the worker: from assignment, fetches included
    try:
        while n < total:
            data = await c.getmany(timeout_ms=200, max_records=20_000)
            for msgs in data.values():
                for m in msgs:
                    obj = msgpack.unpackb(m.value)
                    n += len(obj) if isinstance(obj, list) else 1
    finally:
        await c.stop()
    return n / (time.perf_counter() - t0)


def _faust_eps(bootstrap: str, topic: str, total: int) -> float | None:
    out = subprocess.run([sys.executable, "-m", "longretriever.benchmarks.faust_agent", bootstrap, topic, str(total)],
                         capture_output=True, text=True, timeout=600)
    found = [line.rsplit("EPS ", 1)[1] for line in (out.stdout + out.stderr).splitlines() if "EPS " in line]
    return float(found[-1]) if found else None


def _worker_pass(bootstrap: str, topic: str, store: StateStore, group: str, total: int | None = None,
                 on_applied=None, **kw) -> StreamWorker:
    """The in-process worker until ``total`` events are applied (or, with None, until caught up)."""
    s = Settings(bootstrap=bootstrap, topic=topic, dlq_topic=topic + ".dlq", group_id=group, **kw)
    w = StreamWorker(s, store, on_applied=on_applied)
    if total is None:
        asyncio.run(w.run(until_caught_up=True, max_seconds=600))
    else:
        asyncio.run(w.run(max_events=total, max_seconds=600))
    return w


def _faust_pass(bootstrap: str, topic: str, store: StateStore, group: str):
    """The faust engine (stream.faust_engine) until caught up; same rate convention."""
    from longretriever.stream.faust_engine import run_faust_worker

    s = Settings(bootstrap=bootstrap, topic=topic, dlq_topic=topic + ".dlq", group_id=group)
    return run_faust_worker(s, store, until_caught_up=True, max_seconds=900)


def _refresh_run(bootstrap: str, topic: str, total: int, ev: Path, it: Path, tmp: Path) -> dict:
    """The worker again, with the event-driven refresh of query vectors attached (a real
    bundle trained on the same items): what the refresh costs the ingest rate."""
    from longretriever.retriever.assemble import state_contexts
    from longretriever.retriever.bundle import load_bundle
    from longretriever.retriever.refresh import Refresher, VectorCache

    train_small(ev, it, tmp / "bundle", budget=4, k=256, w=32)
    bundle = load_bundle(tmp / "bundle", intra_op_threads=1)
    store = StateStore(tmp / "state-refresh", state_contexts(bundle, None))
    # speculative: every touched (user, context) is re-encoded, as if every user's every context
    # had been queried before -- the upper bound of what the refresh can cost the ingest
    refresher = Refresher(bundle, store, VectorCache(1_000_000), speculative=True,
                          allowed=set(np.unique(bundle.item_contexts).tolist())).start()
    w = _worker_pass(bootstrap, topic, store, "bench-r", total, on_applied=refresher.on_applied)
    refresher.drain(120)  # let the last refresh finish
    refresher.stop()
    store.close()
    return {"worker_with_refresh_eps": round(w.stats.ingest_eps()), "refreshed_vectors": refresher.refreshed_rows}


def _backfill(bootstrap: str, topic: str, it: Path, state: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    bf = subprocess.run([sys.executable, "-m", "longretriever.cli", "stream", "--bootstrap", bootstrap,
                         "--state-dir", str(state), "--items", str(it), "--topic", topic,
                         "--group-id", "bench-b", "--until-caught-up"], check=True, capture_output=True,
                        text=True)
    return json.loads(bf.stdout.strip().splitlines()[-1])["events_per_s"], time.perf_counter() - t0


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def run_ingest_bench(users: int = 200, events_per_user: int = 3000, bootstrap: str | None = None,
                     with_refresh: bool = True, with_faust: bool = True) -> dict:
    from longretriever.infra.kafka import broker

    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="lr-bench-ingest-"))
    started = None
    if bootstrap is None:
        started = broker.start(tmp / "kafka")
        bootstrap = started.bootstrap
    try:
        ev, it = write_synth(tmp / "syn.csv", users, events_per_user, items=50_000, contexts=20, seed=1)
        ds = load_dataset(ev, it, "csv")
        total = len(ds.events)
        topic, single = f"bench-{int(time.time())}", f"bench-single-{int(time.time())}"
        ensure_topic(bootstrap, topic, 4)
        ensure_topic(bootstrap, single, 4)
        rep = replay(ds.events, bootstrap, topic, progress=False)
        rep_single = replay(ds.events, bootstrap, single, progress=False, single_events=True)

        raw = asyncio.run(_raw_consume(bootstrap, topic, total))
        store = StateStore(tmp / "state-worker", ds.contexts)
        worker_eps = _worker_pass(bootstrap, topic, store, "bench-w", total).stats.ingest_eps()
        used, stored = store.storage_bytes()
        store.close()

        raw_single = asyncio.run(_raw_consume(bootstrap, single, total))
        store = StateStore(tmp / "state-single", ds.contexts)
        single_eps = _worker_pass(bootstrap, single, store, "bench-s", total).stats.ingest_eps()
        # then, on that state, the shape of a stream with many users: one event per user and batch
        one = one_event_write(store, ds.events.users(), np.unique(ds.events.item_ids))
        store.close()
        # the changelog's cost (a transaction per batch) and the faust engine, on both shapes
        store = StateStore(tmp / "state-changelog", ds.contexts)
        changelog_eps = _worker_pass(bootstrap, topic, store, "bench-c", total, restore="changelog").stats.ingest_eps()
        store.close()
        store = StateStore(tmp / "state-single-changelog", ds.contexts)
        single_changelog_eps = _worker_pass(bootstrap, single, store, "bench-sc", total,
                                            restore="changelog").stats.ingest_eps()
        store.close()
        engines = {}
        if with_faust:
            for name, t in (("faust_engine_eps", topic), ("single_event_faust_engine_eps", single)):
                store = StateStore(tmp / f"state-{name}", ds.contexts)
                engines[name] = round(_faust_pass(bootstrap, t, store, f"bench-{name}").ingest_eps())
                store.close()

        backfill_eps, backfill_s = _backfill(bootstrap, topic, it, tmp / "state-backfill")
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        faust = _faust_eps(bootstrap, topic, total) if with_faust else None
        refresh = _refresh_run(bootstrap, topic, total, ev, it, tmp) if with_refresh else {}
        # last, so that every pass above reads the same history once: the whole history again,
        # on top of the first pass's state -- every event is a duplicate
        replay(ds.events, bootstrap, topic, progress=False)
        store = StateStore(tmp / "state-worker", ds.contexts)
        resent = _worker_pass(bootstrap, topic, store, "bench-w2").stats
        store.close()
        return {
            "events": total,
            "messages": rep.messages,
            "single_event_messages": rep_single.messages,
            "replay_eps": round(rep.events_per_s),
            "single_event_replay_eps": round(rep_single.events_per_s),
            "raw_consumer_eps": round(raw),
            "worker_eps": round(worker_eps),
            "worker_vs_raw": _ratio(worker_eps, raw),
            "single_event_raw_eps": round(raw_single),
            "single_event_worker_eps": round(single_eps),
            "single_event_worker_vs_raw": _ratio(single_eps, raw_single),
            "worker_eps_changelog": round(changelog_eps),
            "changelog_vs_plain": _ratio(changelog_eps, worker_eps),
            "single_event_worker_eps_changelog": round(single_changelog_eps),
            "single_event_changelog_vs_plain": _ratio(single_changelog_eps, single_eps),
            **one,
            # the one-event write's cost per event against the backlog pass's (wall per message)
            "one_event_vs_backlog": _ratio(one["one_event_stage_us"] + one["one_event_commit_us"],
                                           1e6 / single_eps if single_eps else None),
            **engines,
            "resent_worker_eps": round(resent.taken_eps()),
            "resent_vs_first": _ratio(resent.taken_eps(), worker_eps),
            "resent_duplicates": resent.duplicates,
            "resent_dead_lettered": resent.dead_lettered,
            "backfill_eps": round(backfill_eps),
            "backfill_process_s": round(backfill_s, 2),
            "backfill_vs_raw": _ratio(backfill_eps, raw),
            "faust_agent_eps": round(faust) if faust else None,
            **refresh,
            "bytes_per_event": round(used / max(stored, 1), 2),
            "peak_rss_mb": round(max(child_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), 1),
            "backfill_peak_rss_mb": round(child_rss, 1),
            "loadavg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        }
    finally:
        if started is not None:
            broker.stop(tmp / "kafka")
