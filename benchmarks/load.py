"""The load generator process of the serving benchmarks: single-event messages at a steady
rate. ``python -m longretriever.benchmarks.load BOOTSTRAP RATE SECONDS USERS``.

It produces with confluent-kafka (librdkafka, the `bench` extra) when installed: kafka-python
spends ~90 us of Python per message and topped out at 5.7-10.8k messages/s on this box, so the
20k messages/s that `bench freshness` must report were out of reach; librdkafka's ``produce``
costs a few microseconds. kafka-python stays as the fallback. Either way the producer is
connected and has the topic's metadata before the clock starts (the first send used to block on
metadata and then burst to catch up), and the last line printed is the rate achieved.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np

from longretriever.data.synth import item_ids

CATALOGUE = 5000  # the serving environment's synthetic catalogue (benchmarks.common.serving_env)
TOPIC = "user-events"


Producer = tuple[Callable[[bytes, bytes], None], Callable[[], None]]  # (send(key, value), flush)


def confluent_producer(bootstrap: str, topic: str) -> Producer | None:
    """librdkafka's producer, or None when confluent-kafka is not installed."""
    try:
        from confluent_kafka import Producer as RdProducer
    except ImportError:
        return None
    p = RdProducer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 5,
                    "queue.buffering.max.messages": 1_000_000})
    p.list_topics(topic, timeout=30)  # connected, metadata known

    def send(key: bytes, value: bytes) -> None:
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:  # local queue full: let librdkafka deliver
                p.poll(0.01)
        p.poll(0)

    return send, lambda: p.flush(60)


def kafka_python_producer(bootstrap: str, topic: str) -> Producer:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    p.partitions_for(topic)  # connected, metadata known
    return (lambda key, value: p.send(topic, key=key, value=value) and None), lambda: (p.flush(), p.close())


def run_load(bootstrap: str, rate: float, seconds: float, users: int, topic: str = TOPIC,
             producer: Producer | None = None) -> float:
    """Single-event messages at ``rate`` messages/s, keyed by user, items of the catalogue;
    returns (and prints) the rate achieved."""
    from longretriever.core.codec import Event, encode_event, encode_key

    send, flush = producer or confluent_producer(bootstrap, topic) or kafka_python_producer(bootstrap, topic)
    rng = np.random.default_rng(0)
    n = int(rate * seconds)
    us = rng.integers(0, users, n).tolist()
    ids = item_ids(CATALOGUE)[rng.integers(0, CATALOGUE, n)].tolist()
    keys = [encode_key(u) for u in range(users)]
    step = max(1, int(rate))  # event times follow the schedule (ms), not one ms per message
    t0 = time.perf_counter()
    now = int(time.time() * 1000)
    sent = 0
    for i in range(n):
        u = us[i]
        send(keys[u], encode_event(Event(u, ids[i], now + i * 1000 // step)))
        sent += 1
        if sent % 64:
            continue
        elapsed = time.perf_counter() - t0
        if elapsed > seconds:  # a box that cannot produce `rate` stops on time: the rate achieved is printed
            break
        ahead = sent / rate - elapsed
        if ahead > 0.001:
            time.sleep(ahead)
    achieved = sent / (time.perf_counter() - t0)
    flush()
    print(achieved, flush=True)
    return achieved


if __name__ == "__main__":
    run_load(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
