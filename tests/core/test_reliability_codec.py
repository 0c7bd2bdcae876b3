"""Property fuzz of the codec (no broker): any bytes and any key decode without raising, and
every micro-batch element is accounted for exactly once (valid event or one Rejection) -- the
invariant the DLQ count of tests/stream/test_reliability_fuzz.py relies on. Also the
regression for the poison-key crash found by that test."""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from longretriever.core.codec import Event, decode_columns, decode_message, encode_event
from tests.fixtures.soak import Corpus

NOW = 1_800_000_000_000
TS = 1_700_000_000_000

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=40), st.binary(max_size=40))
field_values = st.one_of(scalars, st.integers(min_value=TS - 10**9, max_value=NOW + 10**9))
event_maps = st.dictionaries(
    st.one_of(st.sampled_from(["user_id", "item_id", "ts", "action", "weight"]), st.text(max_size=8)),
    field_values, max_size=7)
elements = st.one_of(event_maps, scalars, st.lists(scalars, max_size=3),
                     st.fixed_dictionaries({"user_id": st.just(7), "item_id": st.integers(0, 10**6),
                                            "ts": st.integers(TS, TS + 10**6)}))
keys = st.one_of(st.none(), st.just(b"7"), st.binary(max_size=30),
                 st.integers(0, 2**64).map(lambda i: str(i).encode()),
                 st.integers(4000, 6000).map(lambda n: b"7" * n))


def _check(value: bytes, key: bytes | None) -> None:
    cols, bad = decode_columns(value, key, NOW)  # must not raise
    events, bad2 = decode_message(value, key, NOW)
    assert [r.reason for r in bad] == [r.reason for r in bad2]
    assert list(cols.users) == [e.user_id for e in events]
    assert all(r.reason for r in bad)
    try:
        obj = msgpack.unpackb(value, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001
        obj = None
    if isinstance(obj, list) and obj and not any(r.index is None for r in bad):
        # one outcome per element: valid or rejected, never both, never none
        assert sorted(list(cols.index) + [r.index for r in bad]) == list(range(len(obj)))
    else:
        assert len(events) + len(bad) >= 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(elements, st.lists(elements, max_size=8)), keys)
def test_any_msgpack_value_and_key_never_raises(obj, key):
    _check(msgpack.packb(obj, use_bin_type=True), key)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), keys)
def test_any_bytes_never_raise(value, key):
    _check(value, key)


def test_every_corpus_kind_is_accounted_exactly():
    corpus = Corpus(seed=3, users=20, now_ms=NOW, oversize_every=50)
    for _ in range(600):
        m = corpus.malformed()
        cols, bad = decode_columns(m.value, m.key, NOW)
        assert len(bad) == m.bad, (m.kind, [r.reason for r in bad])
        assert list(cols.items) == [e.item_id for e in m.valid], m.kind


def test_huge_digit_key_is_a_rejection_not_a_crash():
    # regression: int() of a > 4300-digit key raised ValueError inside decode_columns, which
    # crashed the worker on every restart at the same offset (poison message)
    value = encode_event(Event(5, 1, TS))
    for key in (b"1" * 5000, b"5" * 4301, b"9" * 20):
        cols, bad = decode_columns(value, key, NOW)
        assert len(cols.users) == 0 and len(bad) == 1 and "does not match" in bad[0].reason
        assert len(bad[0].reason) < 200
    cols, bad = decode_columns(value, b"5", NOW)
    assert list(cols.users) == [5] and not bad
    assert np.array_equal(decode_columns(value, b"0005", NOW)[0].users, [5])  # leading zeros ok
