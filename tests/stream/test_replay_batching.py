"""Windowing / per-user grouping of the replay producer (pure, no Kafka)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from longretriever.data.events import EventLog
from longretriever.core.errors import ConfigError
from longretriever.core.codec import Event, decode_message, encode_batch, encode_key
from longretriever.stream.replay import iter_messages, plan_messages

NOW_MS = 2_000_000_000_000


def _log(n: int = 2000, users: int = 37, seed: int = 3, actions: bool = True) -> EventLog:
    rng = np.random.default_rng(seed)
    uids = (rng.integers(0, users, n) * 11 + 5).astype(np.int64)  # sparse user ids
    items = (1000 + 7 * rng.integers(0, 500, n)).astype(np.int64)
    ts = np.sort(1_420_070_400_000 + rng.integers(0, 10**9, n)).astype(np.int64)
    ts[n // 2:n // 2 + 10] = ts[n // 2]  # ties must keep file order
    acts = rng.choice(np.array(["click", "like"], dtype=object), n) if actions else None
    return EventLog(uids, items, ts, acts)


def _rows(log: EventLog) -> list[tuple]:
    acts = log.actions.tolist() if log.actions is not None else [None] * len(log)
    return list(zip(log.user_ids.tolist(), log.item_ids.tolist(), log.ts_ms.tolist(), acts))


@pytest.mark.parametrize("window", [1, 7, 64, 500, 5000])
def test_every_event_once_one_user_per_message_order_kept(window: int) -> None:
    log = _log()
    plan = plan_messages(log, window)
    flat = [(e.user_id, e.item_id, e.ts, e.action) for _, evs in plan for e in evs]
    assert sorted(flat) == sorted(_rows(log))  # every event exactly once
    assert len(flat) == len(log)
    for uid, evs in plan:
        assert evs and all(e.user_id == uid for e in evs)  # one user per message
        assert all(isinstance(e, Event) for e in evs)
    # per-user order across the whole plan equals the user's order in the log
    expect: dict[int, list[tuple]] = {}
    for row in _rows(log):
        expect.setdefault(row[0], []).append(row)
    got: dict[int, list[tuple]] = {}
    for row in flat:
        got.setdefault(row[0], []).append(row)
    assert got == expect


def test_window_semantics_one_message_per_user_per_window_in_first_event_order() -> None:
    log = _log(n=1000, users=20)
    window = 100
    plan = plan_messages(log, window)
    pos = 0
    for a in range(0, len(log), window):
        users = log.user_ids[a:a + window].tolist()
        first_seen = list(dict.fromkeys(users))  # users by their first event in the window
        msgs = plan[pos:pos + len(first_seen)]
        assert [u for u, _ in msgs] == first_seen
        assert sum(len(evs) for _, evs in msgs) == len(users)
        pos += len(first_seen)
    assert pos == len(plan)


def test_max_batch_splits_a_heavy_user_into_consecutive_messages() -> None:
    n = 50
    log = EventLog(np.full(n, 9, np.int64), np.arange(n, dtype=np.int64) * 7 + 1000,
                   1_420_070_400_000 + np.arange(n, dtype=np.int64), None)
    plan = plan_messages(log, window=1000, max_batch=16)
    assert [len(evs) for _, evs in plan] == [16, 16, 16, 2]
    assert [e.ts for _, evs in plan for e in evs] == log.ts_ms.tolist()
    assert all(e.action is None for _, evs in plan for e in evs)


def test_messages_roundtrip_through_the_codec() -> None:
    log = _log(n=300, users=5)
    for uid, evs in iter_messages(log, 64):
        raw = encode_batch(evs)
        assert isinstance(msgpack.unpackb(raw), list)
        ok, bad = decode_message(raw, encode_key(uid), NOW_MS)
        assert not bad and ok == evs


def test_empty_log_and_bad_arguments() -> None:
    empty = EventLog(*(np.zeros(0, np.int64) for _ in range(3)), None)
    assert plan_messages(empty, 10) == []
    with pytest.raises(ConfigError):
        plan_messages(_log(10), 0)
    with pytest.raises(ConfigError):
        plan_messages(_log(10), 10, max_batch=0)
