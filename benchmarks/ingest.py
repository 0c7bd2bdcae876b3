"""``longretriever bench ingest``: ingest rates on a real local broker, measured in one run.

- ``replay_eps``: kafka-python producer, micro-batched messages (stream.replay)
- ``raw_consumer_eps``: reference — aiokafka ``getmany`` + msgpack decode, nothing else
- ``worker_eps``: the stream worker (decode + validate + RocksDB apply + offsets), in-process
- ``backfill_eps``: ``longretriever stream --until-caught-up`` as a whole process (startup incl.)
- ``faust_agent_eps``: the faust-streaming agent path (``stream.take``) on the same topic, for
  the design decision in docs/stream-design.md
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np

from longretriever.data.events import load_dataset
from longretriever.core.settings import Settings
from longretriever.stream.replay import ensure_topic, replay
from longretriever.stream.state import StateStore
from longretriever.data.synth import write as write_synth
from longretriever.stream.worker import StreamWorker
from longretriever.benchmarks.common import train_small


async def _raw_consume(bootstrap: str, topic: str, total: int) -> float:
    from aiokafka import AIOKafkaConsumer

    from aiokafka import TopicPartition

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


def _refresh_run(bootstrap: str, topic: str, total: int, ds, ev: Path, it: Path, tmp: Path) -> dict:
    """The worker again, with the event-driven refresh of query vectors attached (a real
    bundle trained on the same items): what the refresh costs the ingest rate."""
    from longretriever.retriever.bundle import load_bundle
    from longretriever.retriever.assemble import state_contexts
    from longretriever.retriever.refresh import Refresher, VectorCache

    train_small(ev, it, tmp / "bundle", budget=4, k=256, w=32)
    bundle = load_bundle(tmp / "bundle", intra_op_threads=1)
    store = StateStore(tmp / "state-refresh", state_contexts(bundle, None))
    # speculative: every touched (user, context) is re-encoded, as if every user's every context
    # had been queried before -- the upper bound of what the refresh can cost the ingest
    refresher = Refresher(bundle, store, VectorCache(1_000_000), speculative=True,
                          allowed=set(np.unique(bundle.item_contexts).tolist())).start()
    s = Settings(bootstrap=bootstrap, topic=topic, dlq_topic=topic + ".dlq", group_id="bench-r")
    w = StreamWorker(s, store, on_applied=refresher.on_applied)
    asyncio.run(w.run(max_events=total, max_seconds=600))
    eps = w.stats.ingest_eps()
    refresher.drain(120)  # let the last refresh finish
    refresher.stop()
    rows = refresher.refreshed_rows
    store.close()
    return {"worker_with_refresh_eps": round(eps), "refreshed_vectors": rows}


def run_ingest_bench(users: int = 100, events_per_user: int = 3000,
                     bootstrap: str | None = None, with_refresh: bool = True) -> dict:
    from longretriever.infra.kafka import broker

    tmp = Path(tempfile.mkdtemp(prefix="lr-bench-ingest-"))
    started = None
    if bootstrap is None:
        started = broker.start(tmp / "kafka")
        bootstrap = started.bootstrap
    try:
        ev, it = write_synth(tmp / "syn.csv", users, events_per_user, items=50_000, contexts=20, seed=1)
        ds = load_dataset(ev, it, "csv")
        topic = f"bench-{int(time.time())}"
        ensure_topic(bootstrap, topic, 4)
        rep = replay(ds.events, bootstrap, topic, progress=False)
        total = len(ds.events)
        raw = asyncio.run(_raw_consume(bootstrap, topic, total))

        store = StateStore(tmp / "state-worker", ds.contexts)
        s = Settings(bootstrap=bootstrap, topic=topic, dlq_topic=topic + ".dlq", group_id="bench-w")
        w = StreamWorker(s, store)
        asyncio.run(w.run(max_events=total, max_seconds=600))
        worker_eps = w.stats.ingest_eps()  # from assignment to the last commit (join excluded)
        used, stored = store.storage_bytes()
        store.close()

        t0 = time.perf_counter()
        bf = subprocess.run([sys.executable, "-m", "longretriever.cli", "stream", "--bootstrap", bootstrap,
                             "--state-dir", str(tmp / "state-backfill"), "--items", str(it), "--topic", topic,
                             "--group-id", "bench-b", "--until-caught-up"], check=True, capture_output=True,
                            text=True)
        backfill_process_s = time.perf_counter() - t0
        backfill_eps = json.loads(bf.stdout.strip().splitlines()[-1])["events_per_s"]
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        faust = _faust_eps(bootstrap, topic, total)
        refresh = _refresh_run(bootstrap, topic, total, ds, ev, it, tmp) if with_refresh else {}
        return {**refresh,
            "events": total,
            "messages": rep.messages,
            "replay_eps": round(rep.events_per_s),
            "raw_consumer_eps": round(raw),
            "worker_eps": round(worker_eps),
            "backfill_eps": round(backfill_eps),
            "backfill_process_s": round(backfill_process_s, 2),
            "faust_agent_eps": round(faust) if faust else None,
            "worker_vs_raw": round(worker_eps / raw, 3),
            "backfill_vs_raw": round(backfill_eps / raw, 3),
            "bytes_per_event": round(used / max(stored, 1), 2),
            "peak_rss_mb": round(max(child_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), 1),
            "backfill_peak_rss_mb": round(child_rss, 1),
        }
    finally:
        if started is not None:
            broker.stop(tmp / "kafka")
