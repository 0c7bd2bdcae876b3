"""The event contract: valid single events and micro-batches decode; everything else is a
Rejection with a reason and the original bytes, never an exception."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from longretriever.core.codec import (MIN_TS_MS, Event, decode_columns, decode_many, decode_message, encode_batch,
                                      encode_event, encode_key)

NOW = 1_800_000_000_000
GOOD = Event(7, 42, 1_700_000_000_000, "click", 1.5)


def test_single_event_roundtrip():
    evs, bad = decode_message(encode_event(GOOD), encode_key(7), NOW)
    assert evs == [GOOD] and bad == []


def test_micro_batch_roundtrip_keeps_order():
    batch = [Event(7, i, 1_700_000_000_000 + i) for i in range(5)]
    evs, bad = decode_message(encode_batch(batch), b"7", NOW)
    assert evs == batch and bad == []
    cols, bad = decode_columns(encode_batch(batch), b"7", NOW)
    assert list(cols.items) == list(range(5)) and list(cols.index) == list(range(5))


@pytest.mark.parametrize("value,reason", [
    (b"\xc1garbage", "not msgpack"),
    (msgpack.packb({"user_id": 7, "item_id": 1}), "ts must be an integer"),
    (msgpack.packb({"user_id": 7, "item_id": "x", "ts": 1_700_000_000_000}), "item_id must be an integer"),
    (msgpack.packb({"user_id": 7, "item_id": True, "ts": 1_700_000_000_000}), "item_id must be an integer"),
    (msgpack.packb({"user_id": 7, "item_id": -1, "ts": 1_700_000_000_000}), "out of range"),
    (msgpack.packb({"user_id": 7, "item_id": 1, "ts": 5}), "out of range"),
    (msgpack.packb({"user_id": 7, "item_id": 1, "ts": NOW + 10**10}), "out of range"),
    (msgpack.packb({"user_id": 7, "item_id": 1, "ts": MIN_TS_MS, "x": 1}), "unknown field"),
    (msgpack.packb({"user_id": 7, "item_id": 1, "ts": MIN_TS_MS, "weight": float("nan")}), "finite"),
    (msgpack.packb({"user_id": 7, "item_id": 1, "ts": MIN_TS_MS, "action": ""}), "action"),
    (msgpack.packb({"user_id": 8, "item_id": 1, "ts": MIN_TS_MS}), "does not match"),
    (msgpack.packb([]), "empty micro-batch"),
    (msgpack.packb(3), "map or an array"),
    (b"\x00" * 2_000_000, "exceeds"),
])
def test_rejections_have_reason_and_bytes(value, reason):
    evs, bad = decode_message(value, b"7", NOW)
    assert evs == [] and len(bad) == 1
    assert reason in bad[0].reason
    assert bad[0].raw == value


def test_missing_key_is_rejected():
    evs, bad = decode_message(encode_event(GOOD), None, NOW)
    assert not evs and "missing" in bad[0].reason


def test_batch_keeps_valid_events_around_bad_ones():
    good = [Event(7, i, 1_700_000_000_000 + i) for i in range(3)]
    raw = msgpack.packb([good[0].to_map(), {"user_id": 7}, good[1].to_map(),
                         Event(9, 1, 1_700_000_000_000).to_map(), good[2].to_map()])
    evs, bad = decode_message(raw, b"7", NOW)
    assert evs == good
    assert [b.index for b in bad] == [1, 3]
    assert msgpack.unpackb(bad[0].raw) == {"user_id": 7}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(msgpack.packb, st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=6),
    max_leaves=12)))
def test_fuzz_never_raises(value):
    evs, bad = decode_message(value, b"7", NOW)
    assert all(isinstance(e, Event) for e in evs)
    assert evs or bad
    assert_columns_agree(value, b"7")


def assert_columns_agree(value, key):
    """The vectorised decoder accepts exactly what the per-event decoder accepts."""
    evs, bad = decode_message(value, key, NOW)
    cols, bad2 = decode_columns(value, key, NOW)
    assert list(cols.users) == [e.user_id for e in evs]
    assert list(cols.items) == [e.item_id for e in evs]
    assert list(cols.ts) == [e.ts for e in evs]
    assert [(b.reason, b.index) for b in bad2] == [(b.reason, b.index) for b in bad]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {"user_id": st.sampled_from([7, 7, 7, 8, True, -1]),
     "item_id": st.integers(-2, 2**63 - 1) | st.sampled_from([1.0, "3", None]),
     "ts": st.integers(MIN_TS_MS - 5, NOW + 10**9)},
    optional={"action": st.text(max_size=40), "weight": st.floats() | st.integers(-5, 5),
              "extra": st.integers(0, 9)}), min_size=1, max_size=6))
def test_fast_and_slow_paths_agree_on_near_valid_batches(maps):
    assert_columns_agree(msgpack.packb(maps), b"7")
    assert_columns_agree(msgpack.packb(maps[0]), b"7")


def assert_many_agrees(values, keys, max_batch=4096):
    """decode_many over a fetch == decode_columns message by message, concatenated."""
    got = decode_many(values, keys, NOW, max_batch=max_batch)
    users, items, ts, message, index, rejected = [], [], [], [], [], []
    for m, (v, k) in enumerate(zip(values, keys)):
        c, bad = decode_columns(v, k, NOW, max_batch=max_batch)
        users += c.users
        items += c.items
        ts += c.ts
        index += c.index
        message += [m] * len(c.users)
        rejected += [(m, b.reason, b.index, b.raw) for b in bad]
    assert got.users.tolist() == users and got.items.tolist() == items and got.ts.tolist() == ts
    assert got.message.tolist() == message and got.index.tolist() == index
    assert [(m, b.reason, b.index, b.raw) for m, b in got.rejected] == rejected


_MAPS = st.fixed_dictionaries(
    {"user_id": st.sampled_from([7, 7, 7, 8, True, -1]),
     "item_id": st.integers(-2, 2**63 - 1) | st.sampled_from([1.0, "3", None]),
     "ts": st.integers(MIN_TS_MS - 5, NOW + 10**9)},
    optional={"action": st.text(max_size=40) | st.lists(st.integers(-5, 5), max_size=1),
              "weight": st.floats() | st.integers(-5, 5) | st.booleans() | st.just({}),
              "extra": st.integers(0, 9)})
_GOOD = st.builds(lambda u, i, t: {"user_id": u, "item_id": i, "ts": t}, st.sampled_from([7, 8]),
                  st.integers(0, 2**63 - 1), st.integers(MIN_TS_MS, NOW))


_KEYS = st.sampled_from([b"7", b"7", b"8", b"007", None, b"x", b"99999999999999999999"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(
    _GOOD.map(msgpack.packb),  # mostly well-formed single events and micro-batches
    st.lists(_GOOD, min_size=1, max_size=5).map(msgpack.packb),
    _MAPS.map(msgpack.packb), st.lists(_MAPS, max_size=4).map(msgpack.packb),
    st.binary(max_size=30), st.none()), _KEYS), max_size=80))
def test_decode_many_equals_decode_columns_per_message(messages):
    assert_many_agrees([v for v, _ in messages], [k for _, k in messages])


def test_decode_many_all_good_fetch_and_one_bad_message():
    good = [encode_event(Event(7, i, 1_700_000_000_000 + i)) for i in range(200)]
    batches = [encode_batch([Event(8, i, 1_700_000_000_000 + j) for j in range(3)]) for i in range(50)]
    values = good + batches
    keys = [b"7"] * 200 + [b"8"] * 50
    d = decode_many(values, keys, NOW)
    assert d.users.size == 350 and not d.rejected
    assert d.index.tolist()[200:206] == [0, 1, 2, 0, 1, 2] and d.message.tolist()[-1] == 249
    values[123] = b"\xc1"
    keys[217] = b"7"  # a micro-batch of user 8 under key 7
    assert_many_agrees(values, keys)
    assert [m for m, _ in decode_many(values, keys, NOW).rejected] == [123, 217, 217, 217]
    assert_many_agrees(values, keys, max_batch=2)  # every 3-event micro-batch is too long
    assert len(decode_many(values, keys, NOW, max_batch=2).rejected) == 51
