"""The worker's INFO summary of outcomes (issue 12.4): one line per minute with what happened
since the previous line, and a last one at the stop; nothing when nothing happened."""

from __future__ import annotations

import logging

from longretriever.stream import worker as worker_mod
from longretriever.stream.worker import WorkerStats, _Summary


def test_one_line_a_minute_with_the_outcomes_since_the_last(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(worker_mod.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="longretriever.stream.worker")
    stats = WorkerStats()
    summary = _Summary(stats)
    stats.messages, stats.applied, stats.duplicates, stats.late = 10, 7, 2, 1
    clock[0] += 59
    summary.maybe_log()
    assert not caplog.records  # not a minute yet
    clock[0] += 1
    summary.maybe_log()
    stats.messages, stats.applied, stats.dead_lettered = 15, 9, 3
    clock[0] += 30
    summary.maybe_log()  # half a minute: nothing
    summary.maybe_log(force=True)  # the stop
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["last 60 s: 10 messages, 7 applied, 2 duplicates, 1 late, 0 dead lettered, "
                     "0 evicted; partitions []",
                     "last 30 s: 5 messages, 2 applied, 0 duplicates, 0 late, 3 dead lettered, "
                     "0 evicted; partitions []"]
    caplog.clear()
    summary.maybe_log(force=True)  # nothing new since: no line at the stop
    assert not caplog.records
