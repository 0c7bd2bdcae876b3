"""Rebalance with events flowing: worker A alone on 4 partitions, B joins the group (A loses
half), A leaves (B takes everything and rebuilds A's partitions from offset 0). State follows
the partitions, B ends at the ground truth and nothing is applied twice. docs/reliability.md."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from longretriever.data.events import load_dataset
from longretriever.stream.replay import ensure_topic, replay
from tests.fixtures.soak import prefix_events, read_topic
from longretriever.stream.state import StateStore
from longretriever.data.synth import write as write_synth
from longretriever.stream.worker import StreamWorker
from tests.fixtures.support import (assert_state_matches, catch_up, caught_up, expected_sequences, settings_for,
                                    slice_log, split_between, start_alone, wait_for)

pytestmark = pytest.mark.integration


def _assert_prefix(store: StateStore, records, watermark, users_of_part, parts, now_ms):
    """The store's users of ``parts`` hold exactly the log prefix below ``watermark``."""
    want = prefix_events([r for r in records if r.partition in parts], watermark, now_ms)
    for p in parts:
        for u in users_of_part[p]:
            seq = store.sequence(u)
            got = set() if seq is None else set(zip(seq.ts.tolist(), seq.items.tolist()))
            assert got == want.get(u, set()), (p, u)


def test_rebalance_add_then_remove_worker(kafka_bootstrap, topic_name, tmp_path):
    ev, it = write_synth(tmp_path / "syn.csv", users=48, events_per_user=600, items=2_000,
                         contexts=6, seed=9)
    ds = load_dataset(ev, it, "csv")
    n = len(ds.events)
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(slice_log(ds.events, 0, n // 3), kafka_bootstrap, topic_name, window=500, progress=False)
    store_a = StateStore(tmp_path / "a", ds.contexts)
    store_b = StateStore(tmp_path / "b", ds.contexts)
    s = settings_for(kafka_bootstrap, topic_name, tmp_path, group="rebal", fetch_max_records=200)
    a, b = StreamWorker(s, store_a), StreamWorker(s, store_b)
    timings = {}

    def at_end(store, parts):
        return caught_up(kafka_bootstrap, topic_name, store, parts)

    async def scenario():
        ta = await start_alone(a, lambda parts: at_end(store_a, parts), 0.3)
        # B joins while the second third is being produced
        prod = asyncio.create_task(asyncio.to_thread(
            replay, slice_log(ds.events, n // 3, 2 * n // 3), kafka_bootstrap, topic_name,
            window=500, rate=n / 3 / 4, progress=False))
        t0 = time.monotonic()
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: split_between(a, b), 120)
        timings["join_rebalance_s"] = time.monotonic() - t0
        split = (set(a.stats.assigned), set(b.stats.assigned))
        await prod
        await wait_for(lambda: at_end(store_a, split[0]) and at_end(store_b, split[1]), 120, 0.3)
        assert a.stats.assigned == split[0] and b.stats.assigned == split[1]
        snap_a, snap_b = store_a.watermark(), store_b.watermark()
        # A leaves while the last third is being produced; B must rebuild A's partitions
        prod = asyncio.create_task(asyncio.to_thread(
            replay, slice_log(ds.events, 2 * n // 3, n), kafka_bootstrap, topic_name,
            window=500, rate=n / 3 / 4, progress=False))
        t0 = time.monotonic()
        a.stop()
        await ta
        await wait_for(lambda: b.stats.assigned == {0, 1, 2, 3}, 120)
        timings["leave_rebalance_s"] = time.monotonic() - t0
        await prod
        await wait_for(lambda: at_end(store_b, range(4)), 180, 0.3)
        timings["b_caught_up_after_leave_s"] = time.monotonic() - t0
        b.stop()
        await tb
        return split, snap_a, snap_b

    split, snap_a, snap_b = asyncio.run(asyncio.wait_for(scenario(), 420))
    records = read_topic(kafka_bootstrap, topic_name)
    users_of_part: dict[int, set] = {p: set() for p in range(4)}
    for r in records:
        users_of_part[r.partition].add(int(r.key))
    now_ms = int(time.time() * 1000)

    assert split[0] and split[1]
    # nothing applied twice by either worker (the synthetic log has no duplicate events)
    assert a.stats.duplicates == 0 and b.stats.duplicates == 0
    assert a.stats.dead_lettered == b.stats.dead_lettered == 0
    # state follows the partitions: before A left, B held only its own partitions' users
    assert set(snap_b) == split[1]
    # A's state: its kept partitions at their final offsets, the lost ones frozen at the offset
    # of the revoke -- exactly the prefix below what A stored, never more, never less
    _assert_prefix(store_a, records, store_a.watermark(), users_of_part, {0, 1, 2, 3}, now_ms)
    assert {p: store_a.next_offset(p) for p in split[0]} == {p: snap_a[p] for p in split[0]}
    # B: the whole ground truth, equal to a clean single-worker run
    truth = expected_sequences(ds.events, ds.contexts, 100_000)
    assert_state_matches(store_b, truth)
    # every event applied exactly once per worker: B rebuilt all 4 partitions from offset 0
    # (it never had A's), A applied exactly the prefix it stored
    assert b.stats.applied == sum(len(t[0]) for t in truth.values())
    assert a.stats.applied == sum(len(x) for x in prefix_events(records, store_a.watermark(), now_ms).values())
    clean = StateStore(tmp_path / "clean", ds.contexts)
    catch_up(settings_for(kafka_bootstrap, topic_name, tmp_path, group="clean"), clean, timeout=180)
    assert clean.digest() == store_b.digest()
    for st in (store_a, store_b, clean):
        st.close()
    assert np.isfinite(list(timings.values())).all()
    print("RELIABILITY rebalance", json.dumps({
        "events": n, "split": [sorted(x) for x in split],
        "a_applied": a.stats.applied, "b_applied": b.stats.applied,
        **{k: round(v, 2) for k, v in timings.items()}}))
