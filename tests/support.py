"""Test helpers: ground truth computed straight from an event file, and worker runners."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from longretriever.contexts import ContextTable
from longretriever.datasets import EventLog
from longretriever.settings import Settings
from stream.state import StateStore
from stream.worker import StreamWorker


def expected_sequences(log: EventLog, contexts: ContextTable, max_len: int) -> dict[int, tuple]:
    """user -> (items, ts, contexts): dedup on (item, ts), order (ts, item), newest max_len."""
    out = {}
    for user, rows in log.per_user():
        ts, items = log.ts_ms[rows], log.item_ids[rows]
        keys = np.unique(np.stack([ts, items], 1), axis=0)  # sorted by ts then item, deduped
        keys = keys[-max_len:]
        out[user] = (keys[:, 1], keys[:, 0], contexts.context_of(keys[:, 1]))
    return out


def assert_state_matches(store: StateStore, truth: dict[int, tuple]) -> None:
    got = sorted(store.users())
    assert got == sorted(truth), (len(got), len(truth), got[:5], sorted(truth)[:5])
    for user, (items, ts, ctxs) in truth.items():
        seq = store.sequence(user)
        np.testing.assert_array_equal(seq.items, items, err_msg=f"user {user}")
        np.testing.assert_array_equal(seq.ts, ts, err_msg=f"user {user}")
        np.testing.assert_array_equal(seq.contexts, ctxs, err_msg=f"user {user}")


def settings_for(bootstrap: str, topic: str, state_dir, group: str = "g", **kw) -> Settings:
    return Settings(bootstrap=bootstrap, topic=topic, dlq_topic=topic + ".dlq", group_id=group,
                    state_dir=state_dir, **kw)


def catch_up(settings: Settings, store: StateStore, timeout: float = 120.0):
    worker = StreamWorker(settings, store)
    return asyncio.run(asyncio.wait_for(worker.run(until_caught_up=True), timeout))


async def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(interval)
