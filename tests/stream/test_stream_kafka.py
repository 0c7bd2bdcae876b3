"""Kafka replay tests on a real broker: replay -> worker -> state equals the file."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from kafka import KafkaConsumer, KafkaProducer

from longretriever.core.contexts import ContextTable
from longretriever.data.events import load_dataset
from longretriever.core.codec import Event, encode_batch, encode_event, encode_key
from longretriever.stream.replay import ensure_topic, replay
from longretriever.stream.state import StateStore
from longretriever.data.synth import write as write_synth
from longretriever.stream.worker import StreamWorker
from tests.fixtures.support import ENGINES, assert_state_matches, catch_up, expected_sequences, settings_for, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine", ENGINES)
def test_movielens_replay_matches_file_and_is_reproducible(kafka_bootstrap, topic_name,
                                                          movielens_path, tmp_path, engine):
    ds = load_dataset(movielens_path, None, "movielens")
    ensure_topic(kafka_bootstrap, topic_name, 4)
    sent = replay(ds.events, kafka_bootstrap, topic_name, progress=False)
    assert sent.events == len(ds.events) == 100_836
    digests = []
    for run in range(2):
        store = StateStore(tmp_path / f"state{run}", ds.contexts)
        st = catch_up(settings_for(kafka_bootstrap, topic_name, tmp_path, group=f"g{run}"), store, engine=engine)
        assert st.dead_lettered == 0
        assert_state_matches(store, expected_sequences(ds.events, ds.contexts, 100_000))
        digests.append(store.digest())
        store.close()
    assert digests[0] == digests[1]


@pytest.mark.parametrize("engine", ENGINES)
def test_synthetic_ultra_long_with_cap(kafka_bootstrap, topic_name, tmp_path, engine):
    ev, it = write_synth(tmp_path / "syn.csv", users=8, events_per_user=15_000, items=5_000,
                         contexts=12, seed=3)
    ds = load_dataset(ev, it, "csv")
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(ds.events, kafka_bootstrap, topic_name, progress=False)
    store = StateStore(tmp_path / "state", ds.contexts, max_len=10_000, segment_events=512)
    catch_up(settings_for(kafka_bootstrap, topic_name, tmp_path), store, engine=engine)
    truth = expected_sequences(ds.events, ds.contexts, 10_000)
    assert all(len(t[0]) == 10_000 for t in truth.values())
    assert_state_matches(store, truth)
    used, events = store.storage_bytes()
    assert events == 80_000 and used / events <= 16


@pytest.mark.parametrize("engine", ENGINES)
def test_duplicates_restart_and_dlq(kafka_bootstrap, topic_name, tmp_path, engine):
    ensure_topic(kafka_bootstrap, topic_name, 2)
    ctx = ContextTable.from_mapping({1: "a", 2: "b", 3: "a"})
    base = 1_700_000_000_000
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    good = [Event(5, 1, base), Event(5, 2, base + 1), Event(6, 3, base + 2)]
    for e in good:
        p.send(topic_name, key=encode_key(e.user_id), value=encode_event(e))
    p.send(topic_name, key=b"5", value=encode_event(good[0]))  # a retrying producer's duplicate
    bad = [b"\xc1\xc1", msgpack.packb({"user_id": 5, "item_id": "x", "ts": base}),
           encode_event(Event(9, 1, base))]  # key 5 vs user 9
    for raw in bad:
        p.send(topic_name, key=b"5", value=raw)
    p.send(topic_name, key=b"5", value=encode_batch([Event(5, 3, base + 5), Event(5, 1, base + 6)]))
    p.flush()
    store = StateStore(tmp_path / "state", ctx)
    s = settings_for(kafka_bootstrap, topic_name, tmp_path)
    st = catch_up(s, store, engine=engine)
    assert (st.applied, st.duplicates, st.dead_lettered) == (5, 1, 3)
    assert store.sequence(5).items.tolist() == [1, 2, 3, 1]
    digest = store.digest()
    # restart with a new consumer group: Kafka would redeliver from the start, the state's own
    # offsets must position the worker so nothing is applied twice
    st2 = catch_up(settings_for(kafka_bootstrap, topic_name, tmp_path, group="other"), store, engine=engine)
    assert st2.applied == 0 and st2.duplicates == 0 and store.digest() == digest
    c = KafkaConsumer(topic_name + ".dlq", bootstrap_servers=kafka_bootstrap,
                      auto_offset_reset="earliest", consumer_timeout_ms=5000)
    dlq = list(c)
    c.close()
    assert sorted(m.value for m in dlq) == sorted(bad)
    for m in dlq:
        h = dict(m.headers)
        assert h["lr.reason"] and h["lr.source.topic"] == topic_name.encode()
        assert int(h["lr.source.offset"]) >= 4
    store.close()


def test_two_workers_split_partitions_and_state_follows(kafka_bootstrap, topic_name, tmp_path):
    ev, it = write_synth(tmp_path / "syn.csv", users=40, events_per_user=300, items=2_000,
                         contexts=6, seed=5)
    ds = load_dataset(ev, it, "csv")
    half = len(ds.events) // 2
    first = type(ds.events)(ds.events.user_ids[:half], ds.events.item_ids[:half],
                            ds.events.ts_ms[:half], None)
    second = type(ds.events)(ds.events.user_ids[half:], ds.events.item_ids[half:],
                             ds.events.ts_ms[half:], None)
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(first, kafka_bootstrap, topic_name, progress=False)
    store_a = StateStore(tmp_path / "a", ds.contexts)
    store_b = StateStore(tmp_path / "b", ds.contexts)
    s = settings_for(kafka_bootstrap, topic_name, tmp_path, group="pair")
    a, b = StreamWorker(s, store_a), StreamWorker(s, store_b)

    def done(worker, store, parts):
        return all(store.next_offset(p) == ends[p] for p in parts) and worker.stats.assigned == set(parts)

    async def scenario():
        nonlocal ends
        ta = asyncio.create_task(a.run())
        ends = _end_offsets(kafka_bootstrap, topic_name)
        await wait_for(lambda: done(a, store_a, range(4)))
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: a.stats.assigned and b.stats.assigned
                       and not a.stats.assigned & b.stats.assigned
                       and len(a.stats.assigned | b.stats.assigned) == 4)
        split = (set(a.stats.assigned), set(b.stats.assigned))
        await asyncio.to_thread(replay, second, kafka_bootstrap, topic_name, progress=False)
        ends = _end_offsets(kafka_bootstrap, topic_name)
        await wait_for(lambda: done(a, store_a, split[0]) and done(b, store_b, split[1]))
        a.stop()
        await ta
        await wait_for(lambda: done(b, store_b, range(4)))  # b rebuilds a's partitions
        b.stop()
        await tb
        return split

    ends: dict[int, int] = {}
    split = asyncio.run(asyncio.wait_for(scenario(), 180))
    assert split[0] and split[1]
    assert_state_matches(store_b, expected_sequences(ds.events, ds.contexts, 100_000))


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
    ends = {tp.partition: o for tp, o in c.end_offsets(tps).items()}
    c.close()
    return ends
