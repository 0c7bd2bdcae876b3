"""Out-of-order and duplicate policy through a real broker (docs/stream-design.md): canonical
order (ts, item_id); dedup key (user, item, ts); an event older than the user's newest event
*before it* minus late_tolerance_ms goes to the DLQ with reason "late event"; the decision is a
function of the log, so it is the same across restarts, re-deliveries and batch sizes."""

from __future__ import annotations

import random

import msgpack
import pytest
from kafka import KafkaProducer

from longretriever.core.codec import Event, encode_batch, encode_event, encode_key
from longretriever.stream.replay import ensure_topic
from tests.fixtures.soak import read_topic
from longretriever.stream.state import StateStore
from tests.fixtures.support import catch_up, settings_for

pytestmark = pytest.mark.integration

TOL = 60_000  # late tolerance (ms) used by these tests
BASE = 1_700_000_000_000


def _send(bootstrap, topic, batches):
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_in_flight_requests_per_connection=1)
    for value in batches:
        if isinstance(value, Event):
            p.send(topic, key=encode_key(value.user_id), value=encode_event(value))
        else:
            p.send(topic, key=encode_key(value[0].user_id), value=encode_batch(value))
    p.flush()
    p.close()


def _store(path, **kw):
    return StateStore(path, late_tolerance_ms=TOL, segment_events=16, **kw)


def _settings(bootstrap, topic, tmp_path, group="g", **kw):
    return settings_for(bootstrap, topic, tmp_path, group=group, late_tolerance_ms=TOL, **kw)


def test_out_of_order_in_tolerance_is_inserted_sorted(kafka_bootstrap, topic_name, tmp_path):
    ensure_topic(kafka_bootstrap, topic_name, 2)
    rng = random.Random(5)
    # user 1: 200 events arriving shuffled inside a window narrower than the tolerance, in
    # single-event and micro-batch messages; spans many 16-event segments (mid-log inserts)
    evs = [Event(1, 100 + i % 37, BASE + i * 200) for i in range(200)]
    arrival = sorted(evs, key=lambda e: e.ts + rng.uniform(0, TOL * 0.9))
    msgs, i = [], 0
    while i < len(arrival):
        k = rng.choice([1, 1, 3, 7])
        msgs.append(arrival[i] if k == 1 else arrival[i:i + k])
        i += k
    # same millisecond, different items: both kept, ordered by item id
    msgs += [[Event(1, 999, BASE + 5_000), Event(1, 3, BASE + 5_000)]]
    _send(kafka_bootstrap, topic_name, msgs)
    store = _store(tmp_path / "s")
    st = catch_up(_settings(kafka_bootstrap, topic_name, tmp_path), store)
    assert st.late == 0 and st.dead_lettered == 0 and st.duplicates == 0
    want = sorted({(e.ts, e.item_id) for e in evs} | {(BASE + 5_000, 999), (BASE + 5_000, 3)})
    seq = store.sequence(1)
    assert list(zip(seq.ts.tolist(), seq.items.tolist())) == want
    # batch-size independence: one message per fetch gives the same state
    one = _store(tmp_path / "one")
    catch_up(_settings(kafka_bootstrap, topic_name, tmp_path, group="one", fetch_max_records=1), one)
    assert one.digest() == store.digest()
    one.close()
    store.close()


def test_late_events_go_to_dlq_with_reason(kafka_bootstrap, topic_name, tmp_path):
    ensure_topic(kafka_bootstrap, topic_name, 1)
    newest = BASE + 10 * TOL
    msgs = [
        Event(2, 1, newest),
        Event(2, 2, newest - TOL),  # exactly at the boundary: accepted
        Event(2, 3, newest - TOL - 1),  # 1 ms beyond: late
        [Event(2, 4, newest + 10), Event(2, 5, newest + 10 - TOL - 1), Event(2, 6, newest + 5)],
        Event(3, 7, BASE),  # another user's newest is independent: not late
    ]
    _send(kafka_bootstrap, topic_name, msgs)
    store = _store(tmp_path / "s")
    st = catch_up(_settings(kafka_bootstrap, topic_name, tmp_path), store)
    assert (st.applied, st.late, st.dead_lettered) == (5, 2, 2)
    assert store.sequence(2).items.tolist() == [2, 1, 6, 4]
    assert store.sequence(3).items.tolist() == [7]
    dlq = read_topic(kafka_bootstrap, topic_name + ".dlq", expect=2)
    assert len(dlq) == 2
    got = {}
    for r in dlq:
        h = dict(r.headers)
        assert h["lr.reason"].startswith(b"late event")
        got[int(h["lr.source.offset"])] = (h.get("lr.batch.index"), msgpack.unpackb(r.value))
    # a late single-event message carries no lr.batch.index (like a malformed whole message);
    # a late element of a micro-batch carries its position
    assert got == {2: (None, Event(2, 3, newest - TOL - 1).to_map()),
                   3: (b"1", Event(2, 5, newest + 10 - TOL - 1).to_map())}
    # the decision is a function of the log: a fresh replay makes the same one
    again = _store(tmp_path / "again")
    st2 = catch_up(_settings(kafka_bootstrap, topic_name, tmp_path, group="again", fetch_max_records=1), again)
    assert (st2.applied, st2.late) == (5, 2) and again.digest() == store.digest()
    again.close()
    store.close()


def test_duplicates_across_restarts(kafka_bootstrap, topic_name, tmp_path):
    ensure_topic(kafka_bootstrap, topic_name, 2)
    first = [Event(4, i, BASE + i * 1000) for i in range(50)]
    _send(kafka_bootstrap, topic_name, [first[:20], *first[20:]])
    store = _store(tmp_path / "s")
    s = _settings(kafka_bootstrap, topic_name, tmp_path)
    st = catch_up(s, store)
    assert st.applied == 50
    digest = store.digest()
    store.close()

    # a retrying producer re-sends recent events (in tolerance), plus new ones and a duplicate
    # inside one micro-batch; then a very old re-send (beyond the tolerance)
    resend = first[-10:]
    new = [Event(4, 1000 + i, BASE + 60_000 + i) for i in range(5)]
    _send(kafka_bootstrap, topic_name, [resend, *resend[:3], new + [new[0]], first[0]])
    store = _store(tmp_path / "s")  # restart: same state dir
    st = catch_up(_settings(kafka_bootstrap, topic_name, tmp_path, group="restarted"), store)
    # only the messages after the stored offsets were read: nothing of the first run again
    # first[0] is older than newest - tolerance, but identical to a stored event: a duplicate
    # whatever its age, never dead-lettered as late
    assert st.applied == 5 and st.duplicates == 10 + 3 + 1 + 1
    assert st.late == 0 and st.dead_lettered == 0
    seq = store.sequence(4)
    assert seq.items.tolist() == [e.item_id for e in first + new]
    assert store.digest() != digest
    digest2 = store.digest()
    store.close()

    # restart once more with nothing new: no change at all; a clean replay agrees
    store = _store(tmp_path / "s")
    st = catch_up(_settings(kafka_bootstrap, topic_name, tmp_path, group="third"), store)
    assert st.applied == st.duplicates == st.late == 0 and store.digest() == digest2
    store.close()
    clean = _store(tmp_path / "clean")
    catch_up(_settings(kafka_bootstrap, topic_name, tmp_path, group="clean"), clean)
    assert clean.digest() == digest2
    clean.close()
