"""Replay a historical :class:`~longretriever.data.events.EventLog` into Kafka, in timestamp order.

Per-message overhead of kafka-python (~tens of microseconds per ``send``) would cap a naive
one-event-per-message replay far below the target, so consecutive events are grouped in
*windows* of ``window`` events (in log order). Inside a window all events of one user become
one micro-batch message (a msgpack array, :func:`longretriever.core.codec.encode_batch`), keyed by
:func:`longretriever.core.codec.encode_key` so that all of a user's events land on one partition.

Ordering guarantees (what the stream consumer relies on):

* inside a message, a user's events are in log order (timestamp, ties by file order);
* inside a window, messages are sent in order of each user's first event in that window; a
  user with more than ``max_batch`` events in one window gets several consecutive messages;
* windows are sent one after the other, and the producer keeps per-partition order
  (idempotent producer: ``acks="all"``, ``max_in_flight_requests_per_connection=1``, retries),
  so a user's messages arrive in the order they were produced, without duplicates from retries.

The grouping is a pure function (:func:`iter_messages` / :func:`plan_messages`), separate from
the I/O in :func:`replay`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Iterator

import numpy as np

from longretriever.data.events import EventLog
from longretriever.core.errors import ConfigError, ServiceUnavailable
from longretriever.core.codec import DEFAULT_MAX_BATCH, Event, encode_batch, encode_event, encode_key

log_ = logging.getLogger(__name__)

# Producer tuning, measured on the shared 2-core dev box against the local KRaft broker
# (300k synthetic events, ~9k micro-batch messages). kafka-python checksums record batches with
# the C ``crc32c`` package (a dependency: its pure-Python fallback capped replay at ~22k ev/s):
# 512 KiB batches + 20 ms linger amortise the single in-flight request (5 ms / 256 KiB and
# 50 ms / 1 MiB were within noise); compression none: lz4 is not installed, and gzip (level 9
# in kafka-python) roughly halved throughput on loopback.
LINGER_MS = 20
BATCH_SIZE = 512 * 1024
MAX_REQUEST_SIZE = 4 * 1024 * 1024
COMPRESSION: str | None = None
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class ReplayStats:
    events: int
    messages: int
    seconds: float
    events_per_s: float


def iter_messages(log: EventLog, window: int = 5000,
                  max_batch: int = DEFAULT_MAX_BATCH) -> Iterator[tuple[int, list[Event]]]:
    """Yield ``(user_id, events)`` micro-batches in send order (see the module docstring).

    Every event of ``log`` appears in exactly one micro-batch, each micro-batch holds one user's
    events in log order, and at most ``max_batch`` of them (the consumer's limit)."""
    if window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
    n = len(log)
    for a in range(0, n, window):
        b = min(a + window, n)
        users = log.user_ids[a:b]
        order = np.argsort(users, kind="stable")  # groups by user, each group in log order
        sorted_users = users[order]
        starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
        ends = np.r_[starts[1:], order.size]
        # a group's first index in ``order`` is its user's earliest event in the window
        group_order = np.argsort(order[starts], kind="stable")
        items = log.item_ids[a:b][order].tolist()  # window rows regrouped by user
        ts = log.ts_ms[a:b][order].tolist()
        acts = log.actions[a:b][order].tolist() if log.actions is not None else None
        starts_l, ends_l, users_l = starts.tolist(), ends.tolist(), sorted_users[starts].tolist()
        for g in group_order.tolist():
            uid, s, e = users_l[g], starts_l[g], ends_l[g]
            if acts is None:
                events = list(map(Event, repeat(uid, e - s), items[s:e], ts[s:e]))
            else:
                events = list(map(Event, repeat(uid, e - s), items[s:e], ts[s:e], acts[s:e]))
            for c in range(0, len(events), max_batch):
                yield uid, events[c:c + max_batch]


def plan_messages(log: EventLog, window: int = 5000,
                  max_batch: int = DEFAULT_MAX_BATCH) -> list[tuple[int, list[Event]]]:
    """All micro-batches of :func:`iter_messages` as a list (for tests and small logs)."""
    return list(iter_messages(log, window, max_batch))


def unreachable(bootstrap: str, exc: BaseException) -> str:
    """The message for a broker that cannot be reached, with the fix."""
    return (f"Kafka not reachable at {bootstrap}: {type(exc).__name__} (is a broker running there? "
            "`longretriever kafka start` starts a local one; or pass --bootstrap HOST:PORT)")


def _producer(bootstrap: str, security: dict[str, Any] | None) -> Any:
    from kafka import KafkaProducer  # local import: heavy
    from kafka.errors import KafkaError, NoBrokersAvailable

    conf: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,  # supported by kafka-python >= 2.1; requires in-flight 1
        max_in_flight_requests_per_connection=1,
        retries=2**31 - 1,
        delivery_timeout_ms=120_000,
        linger_ms=LINGER_MS,
        batch_size=BATCH_SIZE,
        max_request_size=MAX_REQUEST_SIZE,
        compression_type=COMPRESSION,
        client_id="longretriever-replay",
    )
    conf.update(security or {})
    try:
        return KafkaProducer(**conf)
    except NoBrokersAvailable as exc:
        raise ServiceUnavailable(unreachable(bootstrap, exc)) from exc
    except (KafkaError, AssertionError) as exc:  # e.g. a broker without idempotence support
        log_.warning("idempotent producer unavailable (%s); falling back to acks=all, "
                     "1 in flight, retries (ordered, may duplicate on retry)", exc)
        conf["enable_idempotence"] = False
        try:
            return KafkaProducer(**conf)
        except NoBrokersAvailable as exc2:
            raise ServiceUnavailable(unreachable(bootstrap, exc2)) from exc2


def replay(log: EventLog, bootstrap: str, topic: str = "user-events", rate: float | None = None,
           window: int = 5000, progress: bool = True, security: dict | None = None,
           *, max_batch: int = DEFAULT_MAX_BATCH, single_events: bool = False) -> ReplayStats:
    """Produce every event of ``log`` to ``topic`` as per-user micro-batches, in log order
    (``single_events``: one event map per message, the shape real producers send).

    ``rate`` (events/s) throttles the replay (checked after every message); ``None`` means as
    fast as possible. ``security`` is passed to ``KafkaProducer`` (e.g.
    ``Settings.kafka_security()``). Shows a tqdm bar over events when ``progress``. Flushes at
    the end and raises :class:`ServiceUnavailable` if any message could not be delivered."""
    if rate is not None and not rate > 0:
        raise ConfigError(f"rate must be > 0 events/s, got {rate}")
    from kafka.errors import KafkaError
    from tqdm import tqdm

    producer = _producer(bootstrap, security)
    try:
        producer.partitions_for(topic)  # fail early and clearly if the topic is missing
    except KafkaError as exc:
        producer.close(timeout=5)
        raise ServiceUnavailable(f"topic {topic!r} not available at {bootstrap} ({exc}); "
                                 "create it first with ensure_topic()") from exc
    failures: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        failures.append(exc)

    bar = tqdm(total=len(log), unit="ev", unit_scale=True, disable=not progress,
               desc=f"replay -> {topic}", mininterval=0.5)
    events = messages = 0
    send = producer.send
    start = time.perf_counter()
    try:
        pending = 0
        for uid, batch in iter_messages(log, window, 1 if single_events else max_batch):
            value = encode_event(batch[0]) if single_events else encode_batch(batch)
            send(topic, key=encode_key(uid), value=value).add_errback(on_error)
            messages += 1
            events += len(batch)
            pending += len(batch)
            if rate is not None:
                ahead = events / rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)
            if pending >= window:
                bar.update(pending)
                pending = 0
                if failures:
                    break
        bar.update(pending)
        producer.flush()
    except KafkaError as exc:
        raise ServiceUnavailable(f"replay to {topic} at {bootstrap} failed: {exc}") from exc
    finally:
        bar.close()
        producer.close(timeout=10)
    seconds = time.perf_counter() - start
    if failures:
        raise ServiceUnavailable(f"{len(failures)} message(s) to {topic} failed; first: "
                                 f"{failures[0]!r}")
    return ReplayStats(events, messages, seconds, events / seconds if seconds > 0 else 0.0)


def ensure_topic(bootstrap: str, topic: str, partitions: int = 4,
                 security: dict | None = None) -> list[str]:
    """Create ``topic`` and its dead-letter topic ``<topic>.dlq`` if missing; idempotent.

    The source topic gets ``retention.ms=-1`` (keep forever): it is the system of record from
    which the stream state is rebuilt, so deleting old segments would lose history. The DLQ
    uses the broker's default retention. Replication factor is ``min(3, brokers)``. Existing
    topics are left untouched (partition count and configs are not changed). Returns the
    names of the topics this call created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, NoBrokersAvailable, TopicAlreadyExistsError

    if partitions < 1:
        raise ConfigError(f"partitions must be >= 1, got {partitions}")
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="longretriever-admin",
                                 **(security or {}))
    except NoBrokersAvailable as exc:
        raise ServiceUnavailable(unreachable(bootstrap, exc)) from exc
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        brokers = len(admin.describe_cluster().get("brokers", [])) or 1
        replication = min(3, brokers)
        wanted = [(topic, {"retention.ms": "-1"}), (topic + DLQ_SUFFIX, {})]
        for name, configs in wanted:
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, replication, topic_configs=configs)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # created concurrently: fine
        # creation is asynchronous in the cluster: return only once both are in the metadata
        deadline = time.monotonic() + 30
        while not {n for n, _ in wanted} <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"topics {topic} / {topic + DLQ_SUFFIX} not visible after 30 s")
            time.sleep(0.1)
    except KafkaError as exc:
        raise ServiceUnavailable(f"cannot create topic {topic} at {bootstrap}: {exc}") from exc
    finally:
        admin.close()
    return created


def end_offsets(bootstrap: str, topic: str, security: dict | None = None) -> dict[int, int]:
    """partition -> end offset of ``topic`` (kafka-python, blocking)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, **(security or {}))
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        return {tp.partition: o for tp, o in c.end_offsets(tps).items()}
    finally:
        c.close()
