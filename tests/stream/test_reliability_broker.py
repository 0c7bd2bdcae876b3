"""Broker restart mid-stream: the worker runs in-process against a broker of its own (fixed port,
own data dir, not the session broker); the broker is stopped while the replay is producing and
the worker is consuming, then started again on the same port and data dir. With no manual
action the worker must resume and end at the full ground truth with lag 0. docs/reliability.md."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from longretriever.infra.kafka import broker
from longretriever.data.events import load_dataset
from longretriever.stream.replay import ensure_topic, replay
from tests.fixtures.soak import end_offsets
from longretriever.stream.state import StateStore
from longretriever.data.synth import write as write_synth
from longretriever.stream.worker import StreamWorker
from tests.fixtures.support import assert_state_matches, expected_sequences, settings_for, wait_for

pytestmark = pytest.mark.integration


def _lag(bootstrap: str, topic: str, store: StateStore) -> int:
    ends = end_offsets(bootstrap, topic)
    return sum(e - (store.next_offset(p) or 0) for p, e in ends.items())


def _restart_scenario(tmp_path, users: int, events_per_user: int, outages: int, down_s: float):
    data = tmp_path / "kafka"
    port = broker.free_port()
    info = broker.start(data, port, timeout=120)
    try:
        bootstrap = info.bootstrap
        topic = "user-events"
        ev, it = write_synth(tmp_path / "syn.csv", users=users, events_per_user=events_per_user,
                             items=2_000, contexts=6, seed=13)
        ds = load_dataset(ev, it, "csv")
        n = len(ds.events)
        ensure_topic(bootstrap, topic, 4)
        store = StateStore(tmp_path / "state", ds.contexts)
        s = settings_for(bootstrap, topic, tmp_path, group="restart", fetch_max_records=200)
        worker = StreamWorker(s, store)
        timings: dict[str, list] = {"down_s": [], "restart_s": [], "applied_at_stop": []}

        async def scenario():
            task = asyncio.create_task(worker.run())
            # the replay spans the outages: the idempotent producer buffers and retries
            prod = asyncio.create_task(asyncio.to_thread(
                replay, ds.events, bootstrap, topic, window=500,
                rate=n / (6 + outages * (down_s + 20)), progress=False))
            for k in range(outages):
                await wait_for(lambda: worker.stats.applied > n * (k + 1) / (outages + 2), 180)
                timings["applied_at_stop"].append(worker.stats.applied)
                t0 = time.monotonic()
                await asyncio.to_thread(broker.stop, data)
                await asyncio.sleep(down_s)
                timings["down_s"].append(round(time.monotonic() - t0, 1))
                t1 = time.monotonic()
                await asyncio.to_thread(broker.start, data, port, 120)
                timings["restart_s"].append(round(time.monotonic() - t1, 1))
                assert not task.done(), task  # the worker survived the outage
                before, t3 = worker.stats.applied, time.monotonic()
                await wait_for(lambda: worker.stats.applied > before, 120, 0.1)
                timings.setdefault("first_batch_after_restart_s", []).append(
                    round(time.monotonic() - t3, 1))
            await asyncio.wait_for(prod, 300)
            t2 = time.monotonic()
            await wait_for(lambda: worker.stats.applied >= n, 240, 0.3)
            timings["caught_up_after_replay_s"] = round(time.monotonic() - t2, 1)
            assert not task.done()
            worker.stop()
            await task

        asyncio.run(asyncio.wait_for(scenario(), 900))
        assert _lag(bootstrap, topic, store) == 0
        assert worker.stats.duplicates == 0 and worker.stats.dead_lettered == 0
        assert_state_matches(store, expected_sequences(ds.events, ds.contexts, 100_000))
        store.close()
        print("RELIABILITY broker", json.dumps({"events": n, "outages": outages, **timings}))
    finally:
        broker.stop(data)


def test_broker_restart_mid_replay(tmp_path):
    _restart_scenario(tmp_path, users=40, events_per_user=1500, outages=1, down_s=2.0)


@pytest.mark.slow
def test_broker_restarts_repeatedly(tmp_path):
    _restart_scenario(tmp_path, users=60, events_per_user=3000, outages=3, down_s=8.0)
