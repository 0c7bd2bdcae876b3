"""The benches' load generator on the real broker: single-event messages, keyed by user, of the
catalogue, at the rate asked, with either producer."""

from __future__ import annotations

import time

import pytest

from longretriever.benchmarks import load
from longretriever.core.codec import decode_many
from longretriever.data.synth import item_ids
from longretriever.stream.replay import ensure_topic
from tests.fixtures.soak import read_topic


@pytest.mark.parametrize("backend", ["confluent", "kafka-python"])
def test_load_generator_sends_single_events_at_the_rate(kafka_bootstrap, topic_name, backend):
    ensure_topic(kafka_bootstrap, topic_name, 2)
    if backend == "confluent":
        pytest.importorskip("confluent_kafka")
        producer = load.confluent_producer(kafka_bootstrap, topic_name)
    else:
        producer = load.kafka_python_producer(kafka_bootstrap, topic_name)
    achieved = load.run_load(kafka_bootstrap, 2000, 1.0, 7, topic=topic_name, producer=producer)
    records = read_topic(kafka_bootstrap, topic_name, expect=2000)
    assert len(records) == 2000 and 1500 < achieved < 2600  # paced, not a burst
    d = decode_many([r.value for r in records], [r.key for r in records], int(time.time() * 1000) + 10**7)
    assert not d.rejected and len(d.users) == 2000  # one valid event per message, key == user
    assert set(d.users.tolist()) <= set(range(7))
    assert set(d.items.tolist()) <= set(item_ids(load.CATALOGUE).tolist())
    span = d.ts.max() - d.ts.min()
    assert 900 <= span <= 1100  # event times follow the 1-s schedule
