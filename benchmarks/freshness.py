"""``longretriever bench freshness``: produce -> visible in ``Retrieve``, under a steady load.

A real broker, a tiny trained bundle, Milvus Lite and the serving process (stream worker +
event-driven refresh + gRPC) run locally. A producer sends single-event messages at ``rate``
events/s for ``seconds``; for a sample of them a prober polls ``Retrieve`` for that user until
the answer's watermark covers the event's offset (the watermark is read in the same snapshot
as the state, so the answer was computed with that event). Latency = visible - sent.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from longretriever.benchmarks.common import parse_watermark, percentile, scrape_stages, serving_env, start_load


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
                r = client.retrieve(u, 10, 1)
                rpc_ms.append((time.perf_counter() - t) * 1000)
                if parse_watermark(r["watermark"]).get(md.partition, 0) > md.offset:
                    lat.append((time.perf_counter() - sent) * 1000)
                    break
            time.sleep(0.02)
        out, _ = load.communicate(timeout=seconds + 60)
        producer.close()
        stages = scrape_stages(env["metrics_port"])
    achieved = float(out.strip().splitlines()[-1]) if out.strip() else 0.0
    return {"events_per_s": round(achieved), "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
            "samples": len(lat), "seconds": seconds, "retrieve_p50_ms": percentile(rpc_ms, 0.5),
            "latencies_ms": [round(x, 1) for x in lat], "server_stage_mean_ms": stages}
