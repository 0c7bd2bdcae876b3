"""The one-event write, measured: batches in which each user has exactly one new single-event
message -- the shape of a live stream with many users, where a fetch seldom holds two events of
one user. The ingest bench's single-event topic is a backlog (a fetch holds hundreds of events
per user), which amortises the per-user work this shape pays on every event.

In-process, on a state the worker built: the worker's own decode + stage
(``StreamWorker._decode_and_stage``) on records shaped like aiokafka's, then the commit; only
the Kafka fetch is left out (the raw consumer loop of ``bench ingest`` measures that part)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from aiokafka import TopicPartition

from longretriever.core.codec import Event, encode_event, encode_key
from longretriever.core.settings import Settings
from longretriever.stream.state import StateStore
from longretriever.stream.worker import StreamWorker

PARTITIONS = 4


@dataclass(frozen=True, slots=True)
class _Record:  # the fields of aiokafka's ConsumerRecord the worker reads
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


def one_event_write(store: StateStore, users: np.ndarray, items: np.ndarray, batches: int = 50,
                    seed: int = 2) -> dict[str, float]:
    """``batches`` batches, each with one event for every user of ``users`` (in a shuffled
    order, items drawn from ``items``, all newer than anything stored); CPU time per event of
    the stage and of the commit (us), and events applied."""
    w = StreamWorker(Settings(bootstrap="127.0.0.1:9", topic="one-event", dlq_topic="one-event.dlq",
                              group_id="one-event"), store)
    rng = np.random.default_rng(seed)
    next_off = {p: store.next_offset(p) or 0 for p in range(PARTITIONS)}
    now = int(time.time() * 1000)
    stage = commit = 0.0
    applied = 0
    for b in range(batches):
        data: dict[TopicPartition, list[_Record]] = defaultdict(list)
        for j, (u, i) in enumerate(zip(rng.permutation(users).tolist(), rng.choice(items, users.size).tolist())):
            p = u % PARTITIONS
            value = encode_event(Event(u, i, now + b * users.size + j))
            data[TopicPartition("one-event", p)].append(_Record("one-event", p, next_off[p], encode_key(u), value))
            next_off[p] += 1
        t0 = time.thread_time()
        staged = w._decode_and_stage(dict(data), now + 86_400_000)
        t1 = time.thread_time()
        wb, res, rejected, _, _ = staged
        store.commit(wb)
        commit += time.thread_time() - t1
        stage += t1 - t0
        applied += res.appended
        if rejected:
            raise AssertionError(f"the one-event pass rejected {len(rejected)} events: {rejected[0][1].reason}")
    n = batches * users.size
    return {"one_event_stage_us": round(stage / n * 1e6, 2), "one_event_commit_us": round(commit / n * 1e6, 2),
            "one_event_applied": applied}
