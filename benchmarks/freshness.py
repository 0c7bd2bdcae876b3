"""``longretriever bench freshness``: produce -> visible in ``Retrieve``, under a steady load.

A real broker, a tiny trained bundle, Milvus Lite and the serving process (stream worker +
event-driven refresh + gRPC) run locally. A producer sends single-event messages at ``rate``
events/s for ``seconds``; for a sample of them a prober polls ``Retrieve`` for that user until
the answer's watermark covers the event's offset (the watermark is read in the same snapshot
as the state, so the answer was computed with that event). Latency = visible - sent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from longretriever.benchmarks.common import train_small
from longretriever.benchmarks.milvus_probe import percentile


def _parse_watermark(wm: str) -> dict[int, int]:
    out = {}
    for part in filter(None, wm.split(",")):
        p, o = part.split(":")
        out[int(p)] = int(o)
    return out


@contextmanager
def serving_env(users: int = 200, events_per_user: int = 100, serve_args: tuple[str, ...] = ()):
    """A broker, a tiny trained bundle indexed in Milvus Lite, the history replayed, and a
    ``longretriever serve`` subprocess caught up on it. Yields (env dict, client)."""
    from longretriever.export.bundle import load_bundle
    from longretriever.infra.kafka import broker
    from longretriever.data.events import load_dataset
    from longretriever.retriever.client import RetrieverClient
    from longretriever.retriever.milvus_index import MilvusIndex
    from longretriever.stream.replay import ensure_topic, replay
    from longretriever.data.synth import write

    tmp = Path(tempfile.mkdtemp(prefix="lr-serving-"))
    info = broker.start(tmp / "kafka")
    proc = None
    try:
        ev, it = write(tmp / "syn.csv", users, events_per_user, items=5000, contexts=8, seed=3)
        train_small(ev, it, tmp / "bundle")
        bundle = load_bundle(tmp / "bundle")
        idx = MilvusIndex(str(tmp / "milvus.db"), "items")
        idx.build(bundle, "flat", progress=False)
        idx.close()
        ds = load_dataset(ev, it, "csv")
        ensure_topic(info.bootstrap, "user-events", 4)
        rep = replay(ds.events, info.bootstrap, "user-events", progress=False)
        port, metrics_port = broker.free_port(), broker.free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "longretriever.cli", "serve", "--bundle", str(tmp / "bundle"),
             "--milvus-uri", str(tmp / "milvus.db"), "--collection", "items", "--bootstrap", info.bootstrap,
             "--state-dir", str(tmp / "state"), "--port", str(port), "--host", "127.0.0.1",
             "--group-id", "bench", "--metrics-port", str(metrics_port), *serve_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = RetrieverClient(f"127.0.0.1:{port}", timeout=10)
        _wait_caught_up(client, rep.messages, users)
        env = {"bootstrap": info.bootstrap, "port": port, "pid": proc.pid, "item_ids": bundle.item_ids,
               "users": users, "metrics_port": metrics_port}
        try:
            yield env, client
        finally:
            client.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop(tmp / "kafka")
        shutil.rmtree(tmp, ignore_errors=True)


def start_load(bootstrap: str, rate: float, seconds: float, users: int) -> subprocess.Popen:
    """The load generator as its own process (as real producers are)."""
    return subprocess.Popen([sys.executable, "-m", "longretriever.benchmarks.freshness", bootstrap, str(rate),
                             str(seconds), str(users)], stdout=subprocess.PIPE, text=True)


def run_freshness_bench(rate: float = 5000.0, seconds: float = 10.0, users: int = 200) -> dict[str, Any]:
    """``longretriever serve`` (worker + refresh + gRPC) and a load generator run as
    subprocesses; this process only produces the probe events and calls Retrieve."""
    from kafka import KafkaProducer

    from longretriever.core.codec import Event, encode_event, encode_key

    with serving_env(users) as (env, client):
        load = start_load(env["bootstrap"], rate, seconds, users)
        producer = KafkaProducer(bootstrap_servers=env["bootstrap"], acks=1, linger_ms=0)
        rng = np.random.default_rng(1)
        item_ids = env["item_ids"]
        lat: list[float] = []
        rpc_ms: list[float] = []
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            u = int(rng.integers(0, users))
            e = Event(u, int(item_ids[int(rng.integers(0, item_ids.size))]), int(time.time() * 1000))
            sent = time.perf_counter()
            md = producer.send("user-events", key=encode_key(u), value=encode_event(e)).get(10)
            while time.perf_counter() - sent < 10:
                t = time.perf_counter()
                r = client.retrieve(u, 10, 1, True)
                rpc_ms.append((time.perf_counter() - t) * 1000)
                if _parse_watermark(r["watermark"]).get(md.partition, 0) > md.offset:
                    lat.append((time.perf_counter() - sent) * 1000)
                    break
            time.sleep(0.02)
        out, _ = load.communicate(timeout=seconds + 60)
        producer.close()
        from longretriever.benchmarks.soak import _scrape_stages
        stages = _scrape_stages(env["metrics_port"])
    achieved = float(out.strip().splitlines()[-1]) if out.strip() else 0.0
    return {"events_per_s": round(achieved), "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
            "samples": len(lat), "seconds": seconds, "retrieve_p50_ms": percentile(rpc_ms, 0.5),
            "latencies_ms": [round(x, 1) for x in lat], "server_stage_mean_ms": stages}


def _wait_caught_up(client, messages: int, users: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = client.retrieve(users - 1, 10, 1, True)
            if sum(_parse_watermark(r["watermark"]).values()) >= messages and not r["fallback"]:
                return
        except Exception:  # noqa: BLE001 - server still starting
            pass
        time.sleep(0.2)
    raise TimeoutError("serving process did not catch up")


def _load(bootstrap: str, rate: float, seconds: float, users: int) -> None:
    """Load generator process: single-event messages at ``rate`` events/s."""
    from kafka import KafkaProducer

    from longretriever.core.codec import Event, encode_event, encode_key

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    rng = np.random.default_rng(0)
    n = int(rate * seconds)
    us = rng.integers(0, users, n)
    t0 = time.perf_counter()
    now = int(time.time() * 1000)
    for i in range(n):
        u = int(us[i])
        producer.send("user-events", key=encode_key(u), value=encode_event(Event(u, 1000 + i % 5000 * 7, now + i)))
        ahead = (i + 1) / rate - (time.perf_counter() - t0)
        if ahead > 0.001:
            time.sleep(ahead)
    producer.flush()
    print(n / (time.perf_counter() - t0), flush=True)
    producer.close()


if __name__ == "__main__":
    _load(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
