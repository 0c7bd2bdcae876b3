"""Issue 12 items 4-5 on a real broker: a fully re-sent history is counted as duplicates
(never dead-lettered as late) and changes nothing; ``stream`` / ``serve`` refuse a state built
with another item -> context table (one line, exit 2) unless ``--reindex-contexts``, which
re-derives the contexts from the stored events."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from longretriever.core.contexts import ContextTable
from longretriever.data.events import load_dataset
from longretriever.data.synth import write as write_synth
from longretriever.stream.replay import ensure_topic, replay
from longretriever.stream.state import StateStore
from tests.fixtures.soak import end_offsets
from tests.fixtures.support import assert_state_matches, catch_up, expected_sequences, settings_for

pytestmark = pytest.mark.integration


def _summed_summaries(caplog) -> dict[str, int]:
    """The worker's INFO outcome lines ("last N s: 3 messages, 0 applied, ...") added up."""
    total: dict[str, int] = {}
    for r in caplog.records:
        if r.name == "longretriever.stream.worker" and r.levelno == logging.INFO and r.getMessage().startswith("last "):
            for v, k in re.findall(r"(\d+) ([a-z ]+?)(?=,|;)", r.getMessage().split(": ", 1)[1]):
                total[k] = total.get(k, 0) + int(v)
    return total


def test_resent_history_is_all_duplicates(kafka_bootstrap, topic_name, tmp_path, caplog):
    ev, it = write_synth(tmp_path / "syn.csv", users=30, events_per_user=1500, items=3_000,
                         contexts=8, seed=31)
    ds = load_dataset(ev, it, "csv")
    n = len(ds.events)
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(ds.events, kafka_bootstrap, topic_name, progress=False)
    store = StateStore(tmp_path / "state", ds.contexts)
    first = catch_up(settings_for(kafka_bootstrap, topic_name, tmp_path, group="a"), store)
    assert first.applied == n and first.dead_lettered == 0
    digest = store.digest()
    replay(ds.events, kafka_bootstrap, topic_name, progress=False)  # the whole history again
    caplog.set_level(logging.INFO, logger="longretriever.stream.worker")
    caplog.clear()
    second = catch_up(settings_for(kafka_bootstrap, topic_name, tmp_path, group="b"), store)
    # the events are years older than the user's newest minus the 7-day tolerance: duplicates
    assert (second.applied, second.duplicates, second.late, second.dead_lettered) == (0, n, 0, 0)
    # the INFO summary says so too (one line a minute and one at the stop)
    summed = _summed_summaries(caplog)
    assert (summed["applied"], summed["duplicates"], summed["late"], summed["dead lettered"]) == (0, n, 0, 0)
    assert summed["messages"] == second.messages
    assert store.digest() == digest
    assert store.watermark() == end_offsets(kafka_bootstrap, topic_name)
    assert_state_matches(store, expected_sequences(ds.events, ds.contexts, 100_000))
    store.close()
    print("RESENT", json.dumps({"events": n, "first_s": round(first.seconds, 2),
                                "second_s": round(second.seconds, 2)}))


def _stream(bootstrap, topic, state, *extra, timeout=180):
    return subprocess.run([sys.executable, "-m", "longretriever.cli", "stream", "--bootstrap", bootstrap,
                           "--state-dir", str(state), "--topic", topic, "--group-id", f"g{time.monotonic_ns()}",
                           "--until-caught-up", *extra], capture_output=True, text=True, timeout=timeout)


def test_stream_refuses_another_table_unless_reindexed(kafka_bootstrap, topic_name, tmp_path):
    ev, it = write_synth(tmp_path / "syn.csv", users=12, events_per_user=400, items=800, contexts=5, seed=4)
    ds = load_dataset(ev, it, "csv")
    ensure_topic(kafka_bootstrap, topic_name, 2)
    half = len(ds.events) // 2
    replay(type(ds.events)(ds.events.user_ids[:half], ds.events.item_ids[:half], ds.events.ts_ms[:half], None),
           kafka_bootstrap, topic_name, progress=False)
    state = tmp_path / "state"
    assert _stream(kafka_bootstrap, topic_name, state, "--items", str(it)).returncode == 0
    replay(type(ds.events)(ds.events.user_ids[half:], ds.events.item_ids[half:], ds.events.ts_ms[half:], None),
           kafka_bootstrap, topic_name, progress=False)
    # no --items on a state built with one: refused, one line, exit 2, nothing consumed
    before = StateStore(state, read_only=True)
    wm, digest = before.watermark(), before.digest()
    before.close()
    out = _stream(kafka_bootstrap, topic_name, state)
    assert out.returncode == 2, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--reindex-contexts" in lines[0]
    after = StateStore(state, read_only=True)
    assert after.watermark() == wm and after.digest() == digest
    after.close()
    # with the flag: every user's contexts re-derived, then the rest consumed; equal to a state
    # built with no table from the start (every event in context 0, none doubled)
    out = _stream(kafka_bootstrap, topic_name, state, "--reindex-contexts")
    assert out.returncode == 0, out.stderr
    got = StateStore(state, read_only=True)
    assert_state_matches(got, expected_sequences(ds.events, ContextTable.single(), 100_000))
    assert got.info()["contexts"] == ContextTable.single().digest()
    got.close()


def test_serve_refuses_a_state_of_another_table(reliability_bundle, tmp_path):
    d, bundle, uri, _, _ = reliability_bundle
    state = tmp_path / "other"
    s = StateStore(state, ContextTable.single())  # not the bundle's table
    s.apply(np.array([1, 1]), bundle.item_ids[:2], np.array([1, 2]) * 10**12, {0: 2})
    s.close()
    out = subprocess.run([sys.executable, "-m", "longretriever.cli", "serve", "--bundle", str(d / "bundle"),
                          "--milvus-uri", uri, "--collection", "items", "--state-dir", str(state),
                          "--no-worker", "--port", "0", "--host", "127.0.0.1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "item -> context table" in lines[0], out.stderr
    from longretriever.retriever.assemble import open_serving
    from tests.fixtures.support import settings_for as sf

    sv = open_serving(d / "bundle", uri, "items", sf("127.0.0.1:9", "unused", state), cache_entries=0,
                      reindex_contexts=True)
    try:
        seq = sv.store.sequence(1)
        assert seq.items.tolist() == bundle.item_ids[:2].tolist()
        assert seq.contexts.tolist() == bundle.item_contexts[:2].tolist()  # the bundle's contexts now
    finally:
        sv.close()
