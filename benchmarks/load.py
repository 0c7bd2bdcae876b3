"""The load generator process of the serving benchmarks: single-event messages at a steady
rate. ``python -m longretriever.benchmarks.load BOOTSTRAP RATE SECONDS USERS``."""

from __future__ import annotations

import sys
import time

import numpy as np


def run_load(bootstrap: str, rate: float, seconds: float, users: int) -> None:
    """Load generator process: single-event messages at ``rate`` events/s."""
    from kafka import KafkaProducer

    from longretriever.core.codec import Event, encode_event, encode_key

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    rng = np.random.default_rng(0)
    n = int(rate * seconds)
    us = rng.integers(0, users, n)
    t0 = time.perf_counter()
    now = int(time.time() * 1000)
    sent = 0
    for i in range(n):
        u = int(us[i])
        producer.send("user-events", key=encode_key(u), value=encode_event(Event(u, 1000 + i % 5000 * 7, now + i)))
        sent += 1
        elapsed = time.perf_counter() - t0
        if elapsed > seconds:  # a box that cannot produce `rate` stops on time: the rate achieved is printed
            break
        ahead = (i + 1) / rate - elapsed
        if ahead > 0.001:
            time.sleep(ahead)
    producer.flush()
    print(sent / (time.perf_counter() - t0), flush=True)
    producer.close()


if __name__ == "__main__":
    run_load(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
