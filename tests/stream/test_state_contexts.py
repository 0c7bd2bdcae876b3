"""The item -> context table is part of the state: recorded on the first write, a different or
missing table is refused (one clear ConfigError), and ``reindex_contexts`` re-derives every
user's context index from the stored events -- equal to a fresh build under the new table, and
it removes an (item, ts) that an older version stored under two contexts."""

from __future__ import annotations

import numpy as np
import pytest

from longretriever.core.contexts import ContextTable
from longretriever.core.errors import ConfigError
from longretriever.stream.records import INFO_KEY
from longretriever.stream.state import StateStore

A = ContextTable.from_mapping({i: f"a{i % 3}" for i in range(100)})
B = ContextTable.from_mapping({i: f"b{i % 7}" for i in range(100)})
BASE = 1_700_000_000_000


def _events(n=900, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, n), rng.integers(0, 120, n), BASE + np.sort(rng.integers(0, 10**8, n))


def _build(path, table, events, **kw):
    s = StateStore(path, table, segment_events=16, late_tolerance_ms=10**12, **kw)
    u, i, t = events
    s.apply(u, i, t, {0: len(u)})
    return s


def test_other_or_missing_table_is_refused_with_one_line(tmp_path):
    _build(tmp_path / "s", A, _events()).close()
    for table, says in ((B, "table"), (None, "no item -> context table")):
        with pytest.raises(ConfigError) as e:
            StateStore(tmp_path / "s", table)
        msg = str(e.value)
        assert "\n" not in msg and says in msg and "--reindex-contexts" in msg and A.digest() in msg
    StateStore(tmp_path / "s", A).close()  # the same table opens
    ro = StateStore(tmp_path / "s", B, read_only=True)  # readers never write: not checked
    ro.close()


@pytest.mark.parametrize("new", [B, None])
def test_reindex_equals_a_fresh_build_under_the_new_table(tmp_path, new):
    ev = _events()
    s = _build(tmp_path / "s", A, ev)
    before = {u: s.sequence(u) for u in s.users()}
    s.close()
    s = StateStore(tmp_path / "s", new, segment_events=16, reindex_contexts=True)
    fresh = _build(tmp_path / "fresh", new, ev)
    assert s.digest() == fresh.digest()
    table = new or ContextTable.single()
    for u, seq in before.items():
        got = s.sequence(u)
        np.testing.assert_array_equal(got.items, seq.items)
        np.testing.assert_array_equal(got.contexts, table.context_of(seq.items))
        np.testing.assert_array_equal(s.seen_items(u)[0], np.unique(seq.items))
    assert s.info()["contexts"] == table.digest() and s.next_offset(0) == 900
    s.close()
    StateStore(tmp_path / "s", new).close()  # recorded: opens without the flag now
    fresh.close()


def test_reindex_removes_an_event_stored_under_two_contexts(tmp_path):
    """What the old worker did when `stream` ran without --items on a state built with one:
    the same (item, ts) stored once per context (a doubled history), and no recorded table."""
    u, i, t = _events(300)
    doubled = StateStore(tmp_path / "s", A, segment_events=16, late_tolerance_ms=10**12)
    doubled.apply(u, i, t, {0: 300})
    doubled.contexts = ContextTable.single()  # the silent change of table, as before issue 12
    doubled.apply(u, i, t, {0: 600})
    clean = _build(tmp_path / "clean", A, (u, i, t))
    users = sorted(clean.users())
    n_known = int((i < 100).sum())  # items 100.. are unknown to A: context 0 under both tables
    assert sum(len(doubled.sequence(x)) for x in users) == sum(len(clean.sequence(x)) for x in users) + n_known
    doubled.db.delete(INFO_KEY)  # an older state: no recorded table
    doubled.close()
    with pytest.raises(ConfigError, match="older state"):
        StateStore(tmp_path / "s", A)
    fixed = StateStore(tmp_path / "s", A, segment_events=16, reindex_contexts=True)
    assert fixed.digest() == clean.digest() and sorted(fixed.users()) == users
    for x in users:
        want = np.unique(clean.sequence(x).items, return_counts=True)
        got = fixed.seen_items(x)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    fixed.close()
    clean.close()
