"""Changelog restore on a real broker (issue 13): a rebalance 1 -> 2 workers and a worker
leaving restore partitions from the changelog, not the source (state digest equal to a clean
replay); kill -9 during the dual write and during a restore lose or double nothing; a garbled
changelog record -> one log line, a metric, fallback to source replay for that partition;
compaction (tombstones for evicted segments) leaves the restore correct."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import pytest
from kafka import KafkaProducer
from prometheus_client import REGISTRY

from longretriever.data.events import load_dataset
from longretriever.data.synth import write as write_synth
from longretriever.stream.changelog import changelog_topic, ensure_changelog
from longretriever.stream.replay import ensure_topic, replay
from longretriever.stream.state import StateStore
from longretriever.stream.worker import StreamWorker
from tests.fixtures.soak import KillSoak, read_topic
from tests.fixtures.support import (assert_state_matches, catch_up, caught_up, expected_sequences, settings_for,
                                    slice_log, split_between, start_alone, wait_for)

pytestmark = pytest.mark.integration


def _data(tmp_path, users=40, per_user=600, seed=9):
    ev, it = write_synth(tmp_path / "syn.csv", users=users, events_per_user=per_user, items=2_000,
                         contexts=6, seed=seed)
    return load_dataset(ev, it, "csv"), it


def _cl(bootstrap, topic, tmp_path, group, **kw):
    return settings_for(bootstrap, topic, tmp_path, group=group, restore="changelog", **kw)


def _clean_digest(bootstrap, topic, tmp_path, contexts, max_len=100_000):
    clean = StateStore(tmp_path / f"clean{time.monotonic_ns()}", contexts, max_len=max_len)
    catch_up(settings_for(bootstrap, topic, tmp_path, group=f"clean{time.monotonic_ns()}",
                          max_sequence_len=max_len), clean, timeout=240)
    d = clean.digest()
    clean.close()
    return d


def test_rebalance_restores_from_the_changelog(kafka_bootstrap, topic_name, tmp_path):
    ds, _ = _data(tmp_path)
    n = len(ds.events)
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(slice_log(ds.events, 0, n // 2), kafka_bootstrap, topic_name, progress=False)
    store_a, store_b = StateStore(tmp_path / "a", ds.contexts), StateStore(tmp_path / "b", ds.contexts)
    s = _cl(kafka_bootstrap, topic_name, tmp_path, "cl-rebal", fetch_max_records=300)
    a, b = StreamWorker(s, store_a), StreamWorker(s, store_b)

    def at_end(store, parts):
        return caught_up(kafka_bootstrap, topic_name, store, parts)

    async def scenario():
        ta = await start_alone(a, lambda parts: at_end(store_a, parts))
        tb = asyncio.create_task(b.run())  # 1 -> 2 workers
        await wait_for(lambda: split_between(a, b), 120)
        split = set(b.stats.assigned)
        await wait_for(lambda: at_end(store_b, split), 60, 0.2)
        applied_after_join = b.stats.applied
        await asyncio.to_thread(replay, slice_log(ds.events, n // 2, n), kafka_bootstrap, topic_name, progress=False)
        await wait_for(lambda: at_end(store_a, a.stats.assigned) and at_end(store_b, b.stats.assigned), 120, 0.2)
        a.stop()  # 2 -> 1: b takes a's partitions, which it never had
        await ta
        await wait_for(lambda: b.stats.assigned == {0, 1, 2, 3} and at_end(store_b, range(4)), 120, 0.2)
        b.stop()
        await tb
        return split, applied_after_join

    split, applied_after_join = asyncio.run(asyncio.wait_for(scenario(), 420))
    assert split and len(split) < 4
    # b's first partitions came from a's changelog: nothing of the first half was re-applied
    assert applied_after_join == 0
    first: dict[int, str] = {}
    for r in b.restores:  # its own partitions come back later as a (tiny) delta restore
        first.setdefault(r.partition, r.how)
    assert first == {p: "changelog" for p in range(4)}, b.restores
    assert {r.how for r in b.restores} <= {"changelog", "delta"}
    assert b.stats.applied < n  # the second half of its own partitions only, never a source replay
    truth = expected_sequences(ds.events, ds.contexts, 100_000)
    assert_state_matches(store_b, truth)
    assert store_b.digest() == _clean_digest(kafka_bootstrap, topic_name, tmp_path, ds.contexts)
    store_a.close()
    store_b.close()


def _restore_fresh(bootstrap, topic, tmp_path, contexts, name, max_len=100_000, seg=256):
    store = StateStore(tmp_path / name, contexts, max_len=max_len, segment_events=seg)
    w = StreamWorker(_cl(bootstrap, topic, tmp_path, f"{name}{time.monotonic_ns()}"), store)
    asyncio.run(asyncio.wait_for(w.run(until_caught_up=True), 240))
    return store, w


def test_kill9_during_dual_write_and_during_restore(kafka_bootstrap, topic_name, tmp_path):
    ds, it = _data(tmp_path, users=40, per_user=1500, seed=23)
    n = len(ds.events)
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(ds.events, kafka_bootstrap, topic_name, window=500, progress=False)
    env = {"LONGRETRIEVER_RESTORE": "changelog", "LONGRETRIEVER_FETCH_MAX_RECORDS": "50"}
    rng = random.Random(5)
    # kill -9 while the worker publishes + commits (the dual write)
    soak = KillSoak(kafka_bootstrap, topic_name, tmp_path / "w", it, group="kw", seed=5, env=env)
    for run in range(4):
        soak.kill_once(run, rng.uniform(0.3, 2.0))
    soak.finish(4)
    truth = expected_sequences(ds.events, ds.contexts, 100_000)
    st = StateStore(tmp_path / "w", ds.contexts)
    assert_state_matches(st, truth)
    st.close()
    # the changelog the killed runs left behind restores exactly the same state
    restored, w = _restore_fresh(kafka_bootstrap, topic_name, tmp_path, ds.contexts, "r1")
    assert w.stats.applied == 0 and {r.how for r in w.restores} == {"changelog"}
    assert_state_matches(restored, truth)
    restored.close()
    # kill -9 during a restore into a fresh state, then finish: still exact
    soak2 = KillSoak(kafka_bootstrap, topic_name, tmp_path / "r2", it, group="kr", seed=6, env=env,
                     fresh_group_per_run=True, ready_marker="restoring partition")
    for run in range(3):
        soak2.kill_once(run, rng.uniform(0.0, 0.4))
    soak2.finish(3)
    st = StateStore(tmp_path / "r2", ds.contexts)
    assert_state_matches(st, truth)
    st.close()
    assert n == sum(len(t[0]) for t in truth.values())


def _counter(how):
    return REGISTRY.get_sample_value("longretriever_stream_restores_total", {"how": how}) or 0.0


def test_garbled_changelog_record_falls_back_to_source(kafka_bootstrap, topic_name, tmp_path, caplog):
    ds, _ = _data(tmp_path, users=24, per_user=400, seed=3)
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(ds.events, kafka_bootstrap, topic_name, progress=False)
    a = StateStore(tmp_path / "a", ds.contexts)
    catch_up(_cl(kafka_bootstrap, topic_name, tmp_path, "ga"), a)
    digest = a.digest()
    a.close()
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    p.send(changelog_topic(topic_name), key=b"u" + (7).to_bytes(8, "big") + b"s" + b"\x00" * 8,
           value=b"\x00garbage", partition=2).get(10)
    p.close()
    before = _counter("source_fallback")
    with caplog.at_level(logging.WARNING, logger="longretriever.stream.changelog"):
        b, w = _restore_fresh(kafka_bootstrap, topic_name, tmp_path, ds.contexts, "b")
    how = {r.partition: r.how for r in w.restores}
    assert how == {0: "changelog", 1: "changelog", 2: "source_fallback", 3: "changelog"}, w.restores
    assert _counter("source_fallback") == before + 1
    lines = [r.getMessage() for r in caplog.records if "garbled record" in r.getMessage()]
    assert len(lines) == 1 and "partition 2" in lines[0] and "replaying the source" in lines[0]
    assert b.digest() == digest  # nothing lost or doubled
    parts2 = {int(r.key) for r in read_topic(kafka_bootstrap, topic_name) if r.partition == 2}
    assert w.stats.applied == sum(len(b.sequence(u)) for u in parts2)  # partition 2 replayed, only it
    b.close()


def test_compaction_leaves_the_restore_correct(kafka_bootstrap, topic_name, tmp_path):
    ds, _ = _data(tmp_path, users=16, per_user=2000, seed=41)
    n = len(ds.events)
    ensure_topic(kafka_bootstrap, topic_name, 2)
    ensure_changelog(kafka_bootstrap, topic_name, fast_compaction=True)
    cap = 300  # most segments get evicted: tombstones
    a = StateStore(tmp_path / "a", ds.contexts, max_len=cap, segment_events=32)
    for k in range(4):  # several rounds: keys rewritten again and again
        replay(slice_log(ds.events, k * n // 4, (k + 1) * n // 4), kafka_bootstrap, topic_name, progress=False)
        catch_up(_cl(kafka_bootstrap, topic_name, tmp_path, "ca", max_sequence_len=cap, segment_events=32), a)
    digest = a.digest()
    markers = {q: a.next_offset(q) for q in range(2)}
    a.close()
    produced = len(read_topic(kafka_bootstrap, changelog_topic(topic_name)))
    deadline = time.monotonic() + 120
    ticks = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    while True:  # wait for the log cleaner to compact the changelog
        # the cleaner never touches the active segment: re-publish the (unchanged) markers so
        # segments roll (segment.ms=200) -- a marker with the same value changes no state
        for q, off in markers.items():
            ticks.send(changelog_topic(topic_name), key=b"o" + q.to_bytes(4, "big"),
                       value=off.to_bytes(8, "big"), partition=q)
        ticks.flush()
        time.sleep(3)
        left = len(read_topic(kafka_bootstrap, changelog_topic(topic_name)))
        if left < produced * 0.6 or time.monotonic() > deadline:
            break
    ticks.close()
    assert left < produced * 0.6, (left, produced)
    b, w = _restore_fresh(kafka_bootstrap, topic_name, tmp_path, ds.contexts, "b", max_len=cap, seg=32)
    assert w.stats.applied == 0 and {r.how for r in w.restores} == {"changelog"}
    assert b.digest() == digest
    assert_state_matches(b, expected_sequences(ds.events, ds.contexts, cap))
    b.close()


def test_standby_follows_the_other_partitions_so_failover_is_a_delta(kafka_bootstrap, topic_name, tmp_path):
    ds, _ = _data(tmp_path, users=30, per_user=400, seed=12)
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(ds.events, kafka_bootstrap, topic_name, progress=False)
    s = _cl(kafka_bootstrap, topic_name, tmp_path, "cl-sb", standby=True)
    store_a, store_b = StateStore(tmp_path / "a", ds.contexts), StateStore(tmp_path / "b", ds.contexts)
    a, b = StreamWorker(s, store_a), StreamWorker(s, store_b)

    def at_end(store, parts):
        return caught_up(kafka_bootstrap, topic_name, store, parts)

    async def scenario():
        ta = await start_alone(a, lambda parts: at_end(store_a, parts))
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: split_between(a, b), 120)
        theirs = set(a.stats.assigned)
        # b's standby brings a's partitions in b's state up to the changelog, without owning them
        await wait_for(lambda: at_end(store_b, range(4)), 120, 0.2)
        followed = b.standby.applied
        n_restores = len(b.restores)
        a.stop()
        await ta
        await wait_for(lambda: b.stats.assigned == {0, 1, 2, 3} and at_end(store_b, range(4)), 120, 0.2)
        b.stop()
        await tb
        return theirs, followed, b.restores[n_restores:]

    theirs, followed, after = asyncio.run(asyncio.wait_for(scenario(), 300))
    assert followed > 0
    took_over = [r for r in after if r.partition in theirs]
    assert {r.partition for r in took_over} == theirs
    assert all(r.how == "delta" for r in took_over), after  # nothing left to restore but a delta
    assert_state_matches(store_b, expected_sequences(ds.events, ds.contexts, 100_000))
    store_a.close()
    store_b.close()


def test_missing_changelog_topic_falls_back_with_a_shared_restore_consumer(kafka_bootstrap, topic_name, tmp_path):
    """No changelog topic at all (deleted, or never created): each partition falls back to the
    source, and the worker's shared restore consumer keeps working for the next partition."""
    from longretriever.stream import changelog as cl

    ensure_topic(kafka_bootstrap, topic_name, 2)
    store = StateStore(tmp_path / "s", None)

    async def scenario():
        c = cl.restore_consumer(kafka_bootstrap, {})
        await c.start()
        try:
            return [await cl.restore(store, kafka_bootstrap, topic_name, p, {}, True, consumer=c) for p in (0, 1)]
        finally:
            await c.stop()

    results = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [(r.how, r.reason) for r in results] == [("source_fallback", "no changelog topic")] * 2
    assert store.next_offset(0) is None and store.next_offset(1) is None
    store.close()
