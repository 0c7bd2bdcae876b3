"""Malformed-input fuzz through a real broker: thousands of malformed messages of many kinds
(tests.fixtures.soak.Corpus) interleaved with valid events. The worker must never crash, the DLQ must
hold exactly one record per malformed message / micro-batch element (with reason and source
offset), every valid event must be in the state, and the Prometheus counters must move by
exactly the DLQ count. See docs/reliability.md."""

from __future__ import annotations

import collections
import json
import time

import pytest
from prometheus_client import REGISTRY

from longretriever.stream.replay import ensure_topic
from tests.fixtures.soak import Corpus, produce, read_topic, truth_of
from longretriever.stream.state import StateStore
from tests.fixtures.support import catch_up, settings_for

pytestmark = pytest.mark.integration


def _counter(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _fuzz(bootstrap, topic, tmp_path, n_malformed: int, seed: int, oversize_every: int):
    ensure_topic(bootstrap, topic, 4)
    now_ms = int(time.time() * 1000)
    corpus = Corpus(seed, users=50, now_ms=now_ms, oversize_every=oversize_every)
    t0 = time.monotonic()
    sent = produce(bootstrap, topic, corpus.stream(n_malformed))
    produce_s = time.monotonic() - t0
    msgs = [m for m, _, _ in sent]
    expected_bad = sum(m.bad for m in msgs)
    kinds = collections.Counter(m.kind for m in msgs if m.bad)
    assert len(kinds) == len(Corpus.KINDS), kinds  # every kind is exercised
    by_source = {(p, o): m for m, p, o in sent}

    ev0 = _counter("longretriever_stream_events_total", {"outcome": "dlq"})
    applied0 = _counter("longretriever_stream_events_total", {"outcome": "applied"})
    store = StateStore(tmp_path / "state")
    t0 = time.monotonic()
    st = catch_up(settings_for(bootstrap, topic, tmp_path), store, timeout=300)  # no exception = no crash
    worker_s = time.monotonic() - t0

    truth = truth_of(msgs)
    n_valid = sum(len(v[0]) for v in truth.values())
    assert st.dead_lettered == expected_bad and st.late == 0 and st.duplicates == 0
    assert st.applied == n_valid
    assert sorted(store.users()) == sorted(truth)
    for u, (items, ts) in truth.items():
        seq = store.sequence(u)
        assert seq.items.tolist() == items.tolist() and seq.ts.tolist() == ts.tolist(), u
    store.close()

    assert _counter("longretriever_stream_events_total", {"outcome": "dlq"}) - ev0 == expected_bad
    assert _counter("longretriever_stream_events_total", {"outcome": "applied"}) - applied0 == n_valid

    dlq = read_topic(bootstrap, topic + ".dlq", expect=expected_bad)
    assert len(dlq) == expected_bad
    per_source = collections.Counter()
    for r in dlq:
        h = dict(r.headers)
        assert h["lr.reason"].strip(), h
        assert h["lr.source.topic"] == topic.encode()
        src = (int(h["lr.source.partition"]), int(h["lr.source.offset"]))
        assert src in by_source, src
        m = by_source[src]
        assert r.key == m.key
        if "lr.batch.index" not in h:  # a whole message: the original bytes
            assert r.value == m.value
        per_source[src] += 1
    assert per_source == {src: m.bad for src, m in by_source.items() if m.bad}
    result = {"malformed_messages": sum(1 for m in msgs if m.bad), "dlq_records": expected_bad,
              "valid_events": n_valid, "messages": len(msgs), "kinds": dict(kinds),
              "produce_s": round(produce_s, 1), "worker_s": round(worker_s, 1)}
    print("RELIABILITY fuzz", json.dumps(result))


def test_malformed_fuzz_default(kafka_bootstrap, topic_name, tmp_path):
    _fuzz(kafka_bootstrap, topic_name, tmp_path, n_malformed=2_000, seed=7, oversize_every=700)


@pytest.mark.slow
def test_malformed_fuzz_10k(kafka_bootstrap, topic_name, tmp_path):
    _fuzz(kafka_bootstrap, topic_name, tmp_path, n_malformed=10_000, seed=8, oversize_every=1_000)
