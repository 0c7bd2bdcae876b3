"""The meta record's wire format: msgspec writes the bytes msgpack wrote, and reads every
older form."""

import msgpack
from hypothesis import given, strategies as st

from longretriever.stream.records import UserMeta

_ctx = st.lists(st.integers(0, 2**31), min_size=4, max_size=4)


@given(newest=st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)),
       ctxs=st.dictionaries(st.integers(0, 2**32 - 1), _ctx, max_size=12),
       buckets=st.one_of(st.none(), st.integers(1, 2**20)), distinct=st.integers(0, 2**40))
def test_pack_is_msgpack_and_round_trips(newest, ctxs, buckets, distinct):
    m = UserMeta(newest, ctxs, buckets, distinct)
    v = m.pack()
    assert v == msgpack.packb([newest, ctxs, buckets, distinct])
    assert UserMeta.unpack(v) == m


def test_unpack_reads_a_record_from_before_the_seen_index():
    old = msgpack.packb([1_700_000_000_000, {3: [0, 2, 5, 600]}])
    assert UserMeta.unpack(old) == UserMeta(1_700_000_000_000, {3: [0, 2, 5, 600]}, None, 0)


def test_unpack_reads_string_context_keys_as_ints():
    v = msgpack.packb([5, {"7": [0, 0, 0, 1]}, 1, 1])
    assert UserMeta.unpack(v) == UserMeta(5, {7: [0, 0, 0, 1]}, 1, 1)
