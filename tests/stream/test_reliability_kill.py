"""kill -9 of the real worker process (``longretriever stream``) at random points during ingest
and during a concurrent replay; after every kill the state must be exactly the log prefix
below its stored offsets, and the final state must equal a clean run (digest) and the ground
truth: nothing lost, nothing applied twice. See docs/reliability.md."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from longretriever.data.events import load_dataset
from longretriever.stream.replay import ensure_topic, replay
from tests.fixtures.soak import KillSoak, prefix_events, read_topic
from longretriever.stream.state import StateStore
from longretriever.data.synth import write as write_synth
from tests.fixtures.support import assert_state_matches, catch_up, expected_sequences, settings_for, slice_log

pytestmark = pytest.mark.integration

RESULTS: dict[str, dict] = {}  # measured numbers, printed for docs/reliability.md


def _kill_scenario(bootstrap, topic, tmp_path, *, users, events_per_user, kills, max_delay,
                   fetch_records, same_group, seed, concurrent_kills):
    rng = random.Random(seed)
    ev, it = write_synth(tmp_path / "syn.csv", users=users, events_per_user=events_per_user,
                         items=3_000, contexts=8, seed=seed)
    ds = load_dataset(ev, it, "csv")
    ensure_topic(bootstrap, topic, 4)
    half = len(ds.events) // 2
    replay(slice_log(ds.events, 0, half), bootstrap, topic, window=500, progress=False)

    soak = KillSoak(bootstrap, topic, tmp_path / "state", it, group="kill", seed=seed,
                    fresh_group_per_run=not same_group,
                    env={"LONGRETRIEVER_FETCH_MAX_RECORDS": str(fetch_records)})
    # the second half is replayed while the first ``concurrent_kills`` kills happen (rate-limited
    # so it overlaps them). A kill cycle is a start (~2 s) and the delay; with the same group,
    # also the dead member's session (10 s) before the group rebalances onto the new process --
    # pacing without it let the replay end within the first kills, and a worker that drains
    # the rest in under a second left every later kill at the end of the stream
    per_kill_s = 2.0 + max_delay / 2 + (10.0 if same_group else 0.0)
    errors: list[BaseException] = []

    def produce_rest():
        try:
            replay(slice_log(ds.events, half, len(ds.events)), bootstrap, topic, window=500,
                   rate=(len(ds.events) - half) / (concurrent_kills * per_kill_s), progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    producer = threading.Thread(target=produce_rest)
    replay_running = []
    producer.start()
    t0 = time.monotonic()
    for run in range(kills):
        replay_running.append(producer.is_alive())
        soak.kill_once(run, rng.uniform(0.05, max_delay))
    kill_seconds = time.monotonic() - t0
    producer.join(300)
    assert not errors, errors
    recover_s, out = soak.finish(kills)
    stats = json.loads(out.strip().splitlines()[-1])

    # every kill point: the crashed state is exactly the prefix below its stored offsets
    records = read_topic(bootstrap, topic)
    now_ms = int(time.time() * 1000)
    total_msgs = len(records)
    mid = commit_window = 0
    for p in soak.points:
        assert p.returncode == -9
        prefix = prefix_events(records, p.watermark, now_ms)
        assert p.counts == {u: len(s) for u, s in prefix.items()}, "state != its offsets' prefix"
        done = sum(p.watermark.values())
        mid += 0 < done < total_msgs
        # Kafka's (informational) group offsets behind the state's: the kill landed after the
        # RocksDB commit and before/while the Kafka offset commit of that batch
        commit_window += any(p.kafka_committed.get(q, 0) < o for q, o in p.watermark.items())
    assert mid >= kills // 2, [sum(p.watermark.values()) for p in soak.points]

    store = StateStore(tmp_path / "state", ds.contexts)
    truth = expected_sequences(ds.events, ds.contexts, 100_000)
    assert_state_matches(store, truth)  # 0 lost, 0 duplicated
    digest = store.digest()
    store.close()
    clean = StateStore(tmp_path / "clean", ds.contexts)
    catch_up(settings_for(bootstrap, topic, tmp_path, group="clean"), clean, timeout=300)
    assert clean.digest() == digest
    clean.close()
    RESULTS[f"kills={kills}"] = {
        "events": len(ds.events), "messages": total_msgs, "kills": kills,
        "kills_mid_stream": mid, "kills_with_kafka_commit_behind_state": commit_window, "kills_during_replay": sum(replay_running),
        "progress_at_kills": [sum(p.watermark.values()) for p in soak.points],
        "start_to_assigned_s": [round(p.start_to_assigned_s, 2) for p in soak.points],
        "kill_loop_s": round(kill_seconds, 1), "final_catch_up_s": round(recover_s, 2),
        "final_run": stats}
    print("RELIABILITY kill", json.dumps(RESULTS[f"kills={kills}"]))


def test_kill9_during_ingest_and_replay(kafka_bootstrap, topic_name, tmp_path):
    _kill_scenario(kafka_bootstrap, topic_name, tmp_path, users=60, events_per_user=2000,
                   kills=4, max_delay=1.2, fetch_records=50, same_group=False, seed=21,
                   concurrent_kills=2)


@pytest.mark.slow
def test_kill9_many_points_same_group(kafka_bootstrap, topic_name, tmp_path):
    # same consumer group every run: each restart also waits for the dead member's session
    # (10 s) to expire before the group rebalances onto the new process
    _kill_scenario(kafka_bootstrap, topic_name, tmp_path, users=60, events_per_user=4000,
                   kills=12, max_delay=1.0, fetch_records=50, same_group=True, seed=22,
                   concurrent_kills=8)
