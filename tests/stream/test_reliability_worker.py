"""Regression (found by the slow kill test): ``stats.assigned`` -- which ``until_caught_up``
looks at -- must not list a newly assigned partition before every partition of the assignment
is positioned; otherwise a run could stop "caught up" with a partition never consumed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition

from longretriever.stream.worker import WorkerStats, _Rebalance


def test_assigned_is_published_only_after_all_seeks():
    stats = WorkerStats()
    seen_during_seek: list[set] = []
    seeks: dict[int, int] = {}

    class Consumer:
        paused: set = set()

        def pause(self, *tps):
            self.paused |= set(tps)

        def resume(self, *tps):
            self.paused -= set(tps)

        def seek(self, tp, off):
            seeks[tp.partition] = off

        async def seek_to_beginning(self, *tps):
            await asyncio.sleep(0.01)  # aiokafka waits for the fetcher to reset the position
            seen_during_seek.append(set(stats.assigned))
            for tp in tps:
                seeks[tp.partition] = 0

    stored = {0: 17, 2: 5}
    worker = SimpleNamespace(stats=stats, consumer=Consumer(), standby=None, s=SimpleNamespace(restore="source"),
                             store=SimpleNamespace(next_offset=stored.get))
    tps = [TopicPartition("t", p) for p in (0, 1, 2, 3)]
    asyncio.run(_Rebalance(worker).on_partitions_assigned(tps))
    assert seen_during_seek == [set()]
    assert stats.assigned == {0, 1, 2, 3}
    assert seeks == {0: 17, 1: 0, 2: 5, 3: 0}
    assert worker.consumer.paused == set()  # paused while being positioned, resumed after
