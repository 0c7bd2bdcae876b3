"""Replay a small synthetic log into a real Kafka broker and read it back with kafka-python."""

from __future__ import annotations

import time

import pytest

from longretriever.data.events import EventLog, load_dataset
from longretriever.data import synth
from longretriever.core.codec import decode_message
from longretriever.stream.replay import ensure_topic, plan_messages, replay

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)


@pytest.fixture(scope="module")
def small_log(tmp_path_factory) -> EventLog:
    out = tmp_path_factory.mktemp("synth") / "events.csv"
    ev, it = synth.write(out, users=30, events_per_user=200, items=600, contexts=6, seed=4)
    return load_dataset(ev, it).events


def _consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    records = []
    n_events = 0
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    events, rejected = decode_message(rec.value, rec.key, NOW_MS)
                    assert not rejected, rejected[:1]
                    records.append((rec.partition, rec.offset, rec.key, events))
                    n_events += len(events)
            if n_events >= expected:
                # one more poll: anything beyond ``expected`` would be a duplicate
                for batch in consumer.poll(timeout_ms=1000).values():
                    for rec in batch:
                        records.append((rec.partition, rec.offset, rec.key,
                                        decode_message(rec.value, rec.key, NOW_MS)[0]))
                break
    finally:
        consumer.close()
    return records


def test_replay_delivers_every_event_once_in_per_user_order(kafka_bootstrap: str, topic_name: str,
                                                           small_log: EventLog) -> None:
    created = ensure_topic(kafka_bootstrap, topic_name, partitions=4)
    assert sorted(created) == sorted([topic_name, topic_name + ".dlq"])
    assert ensure_topic(kafka_bootstrap, topic_name, partitions=4) == []  # idempotent

    window = 500
    stats = replay(small_log, kafka_bootstrap, topic_name, window=window, progress=False)
    plan = plan_messages(small_log, window)
    assert stats.events == len(small_log) == 6000
    assert stats.messages == len(plan)
    assert stats.seconds > 0 and stats.events_per_s > 0

    records = _consume(kafka_bootstrap, topic_name, len(small_log))
    got = [e for *_, evs in records for e in evs]
    assert len(got) == len(small_log)  # nothing lost, nothing duplicated
    assert len(records) == stats.messages

    # one partition per user; per partition, offsets order == production order
    part_of: dict[int, int] = {}
    per_user: dict[int, list[tuple]] = {}
    for partition, _offset, key, evs in sorted(records, key=lambda r: (r[0], r[1])):
        uid = int(key)
        assert part_of.setdefault(uid, partition) == partition
        per_user.setdefault(uid, []).extend((e.item_id, e.ts, e.action) for e in evs)
    expected: dict[int, list[tuple]] = {}
    for u, i, t, a in zip(small_log.user_ids.tolist(), small_log.item_ids.tolist(),
                          small_log.ts_ms.tolist(), small_log.actions.tolist()):
        expected.setdefault(u, []).append((i, t, a))
    assert per_user == expected


def test_ensure_topic_sets_infinite_retention(kafka_bootstrap: str, topic_name: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    ensure_topic(kafka_bootstrap, topic_name, partitions=2)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert {topic_name, topic_name + ".dlq"} <= set(admin.list_topics())
        resp = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name)])
        entries = {e[0]: e[1] for r in resp for res in r.resources for e in res[4]}
        assert entries["retention.ms"] == "-1"
        desc = admin.describe_topics([topic_name])
        assert len(desc[0]["partitions"]) == 2
    finally:
        admin.close()


def test_rate_throttles(kafka_bootstrap: str, topic_name: str, small_log: EventLog) -> None:
    ensure_topic(kafka_bootstrap, topic_name, partitions=1)
    part = EventLog(small_log.user_ids[:1500], small_log.item_ids[:1500],
                    small_log.ts_ms[:1500], small_log.actions[:1500])
    stats = replay(part, kafka_bootstrap, topic_name, rate=3000, window=100, progress=False)
    assert stats.events == 1500
    assert stats.seconds >= 0.45  # 1500 events at 3000/s
    assert stats.events_per_s <= 3300
