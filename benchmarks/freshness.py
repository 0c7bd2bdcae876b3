"""``longretriever bench freshness``: produce -> visible in ``Retrieve``, under a steady load.

A real broker, a tiny trained bundle, Milvus Lite and the serving process (stream worker +
event-driven refresh + gRPC) run locally. A load generator process sends single-event messages
at ``rate`` events/s for ``seconds``; for a sample of them a prober polls ``Retrieve`` for that
user until the answer's watermark covers the event's offset (the watermark is read in the same
snapshot as the state, so the answer was computed with that event). Latency = visible - sent.

Besides the overall p50/p99 the JSON has the p99 of every 10-s window (``p99_ms_by_10s``: a
worker that falls behind shows a rising series), the consumer lag -- end offsets of the topic
minus the serving watermark -- sampled once a second (``lag_messages_by_10s``: max per window)
and at the end of the load (``lag_end_messages``), and the Retrieve round trips the prober made
while the load ran (``retrieve_p50_ms`` / ``retrieve_p99_ms``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from longretriever.benchmarks.common import parse_watermark, percentile, scrape_stages, serving_env, start_load

WINDOW_S = 10.0


def _by_window(samples: list[tuple[float, float]], fn) -> list[float | None]:
    if not samples:
        return []
    n = int(max(t for t, _ in samples) // WINDOW_S) + 1
    groups: list[list[float]] = [[] for _ in range(n)]
    for t, v in samples:
        groups[int(t // WINDOW_S)].append(v)
    return [fn(g) if g else None for g in groups]


def run_freshness_bench(rate: float = 5000.0, seconds: float = 10.0, users: int = 200) -> dict[str, Any]:
    """``longretriever serve`` (worker + refresh + gRPC) and a load generator run as
    subprocesses; this process only produces the probe events and calls Retrieve."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from longretriever.core.codec import Event, encode_event, encode_key

    load_start = os.getloadavg()
    with serving_env(users) as (env, client):
        load = start_load(env["bootstrap"], rate, seconds, users)
        producer = KafkaProducer(bootstrap_servers=env["bootstrap"], acks=1, linger_ms=0)
        offsets = KafkaConsumer(bootstrap_servers=env["bootstrap"])
        tps = [TopicPartition("user-events", p) for p in sorted(offsets.partitions_for_topic("user-events"))]

        def lag(watermark: str) -> int:
            wm = parse_watermark(watermark)
            return sum(max(0, e - wm.get(tp.partition, 0)) for tp, e in offsets.end_offsets(tps).items())

        rng = np.random.default_rng(1)
        item_ids = env["item_ids"]
        lat: list[tuple[float, float]] = []  # (seconds since start, latency ms)
        rpc_ms: list[float] = []
        lags: list[tuple[float, float]] = []
        t0 = time.monotonic()
        t_end, next_lag = t0 + seconds, t0
        last_wm = ""
        while time.monotonic() < t_end:
            u = int(rng.integers(0, users))
            e = Event(u, int(item_ids[int(rng.integers(0, item_ids.size))]), int(time.time() * 1000))
            sent = time.perf_counter()
            md = producer.send("user-events", key=encode_key(u), value=encode_event(e)).get(10)
            while time.perf_counter() - sent < 10:
                t = time.perf_counter()
                r = client.retrieve(u, 10, 1)
                rpc_ms.append((time.perf_counter() - t) * 1000)
                last_wm = r["watermark"]
                if parse_watermark(last_wm).get(md.partition, 0) > md.offset:
                    lat.append((time.monotonic() - t0, (time.perf_counter() - sent) * 1000))
                    break
            if time.monotonic() >= next_lag:
                lags.append((time.monotonic() - t0, lag(last_wm)))
                next_lag += 1.0
            time.sleep(0.02)
        out, _ = load.communicate(timeout=seconds + 120)  # the producer flushes its backlog
        lag_end = lag(client.retrieve(0, 10, 1)["watermark"])
        producer.close()
        offsets.close()
        stages = scrape_stages(env["metrics_port"])
    achieved = float(out.strip().splitlines()[-1]) if out.strip() else 0.0
    values = [v for _, v in lat]
    return {"events_per_s": round(achieved), "target_events_per_s": rate, "seconds": seconds, "users": users,
            "p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99), "samples": len(values),
            "p99_ms_by_10s": _by_window(lat, lambda g: percentile(g, 0.99)),
            "lag_messages_by_10s": _by_window(lags, max), "lag_end_messages": lag_end,
            "retrieve_p50_ms": percentile(rpc_ms, 0.5), "retrieve_p99_ms": percentile(rpc_ms, 0.99),
            "retrieve_calls": len(rpc_ms), "latencies_ms": [round(v, 1) for v in values],
            "server_stage_mean_ms": stages,
            "loadavg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]}}
