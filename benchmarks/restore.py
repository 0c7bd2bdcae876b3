"""``longretriever bench restore``: rebuilding a partition's state from the compacted changelog
vs replaying the source topic, on a set whose history is much longer than the kept state
(default: 10,000 lifetime events per user, cap 1,000), same run, real local broker.

- ``source_replay_s``: a fresh worker (``--restore source``) until caught up (group join incl.)
- ``changelog_restore_s``: a fresh worker (``--restore changelog``) until caught up: restore of
  every partition from the changelog, then nothing left to consume
- ``worker_eps`` / ``worker_eps_changelog``: the first ingest without / with the changelog
  (the cost of the transactional dual write)
- ``failover_s`` / ``failover_s_standby``: two workers of one group (changelog on), one
  leaves (clean stop); time from its leaving the group until the other owns every partition
  and is caught up (rebalance + restore) -- without and with ``--standby`` (the other
  partitions' changelog followed before the failover); ``failover_restore_s[_standby]``: the
  part of it spent in restores (the rest is the group's rebalance)
- ``state_events``, ``history_events``, ``changelog_bytes`` (keys + values now in the topic),
  ``changelog_records``; ``loadavg``
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from longretriever.core.settings import Settings
from longretriever.data.events import EventLog, load_dataset
from longretriever.data.synth import write as write_synth
from longretriever.stream.changelog import changelog_topic
from longretriever.stream.replay import end_offsets, ensure_topic, replay
from longretriever.stream.state import StateStore
from longretriever.stream.worker import StreamWorker


def _settings(bootstrap: str, topic: str, group: str, **kw) -> Settings:
    return Settings(bootstrap=bootstrap, topic=topic, dlq_topic=topic + ".dlq", group_id=group, **kw)


def _catch_up(s: Settings, store: StateStore) -> tuple[float, StreamWorker]:
    w = StreamWorker(s, store)
    t0 = time.perf_counter()
    asyncio.run(w.run(until_caught_up=True, max_seconds=3600))
    return time.perf_counter() - t0, w


def _changelog_size(bootstrap: str, topic: str) -> tuple[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                      isolation_level="read_committed", fetch_max_bytes=64 * 1_048_576)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    ends = c.end_offsets(tps)
    n = size = 0
    while any(c.position(tp) < ends[tp] for tp in tps):
        for recs in c.poll(timeout_ms=500, max_records=50_000).values():
            for r in recs:
                n += 1
                size += len(r.key or b"") + len(r.value or b"")
    c.close()
    return n, size


def _failover_s(bootstrap: str, topic: str, tmp: Path, contexts, cap: int, standby: bool,
                tag: str = "") -> tuple[float, float]:
    """(seconds from the old owner leaving until the other worker owns every partition and is
    caught up, seconds of that spent in restores)."""
    tag = ("sb" if standby else "nosb") + tag
    s = _settings(bootstrap, topic, f"fo-{tag}", restore="changelog", standby=standby, max_sequence_len=cap)
    sa = StateStore(tmp / f"fo-a-{tag}", contexts, max_len=cap)
    sb = StateStore(tmp / f"fo-b-{tag}", contexts, max_len=cap)
    a, b = StreamWorker(s, sa), StreamWorker(s, sb)
    ends = end_offsets(bootstrap, topic)

    def caught(store, parts) -> bool:
        return all(store.next_offset(p) == ends[p] for p in parts)

    async def scenario() -> float:
        ta = asyncio.create_task(a.run())
        while not (a.stats.assigned == set(ends) and caught(sa, ends)):
            await asyncio.sleep(0.1)
        tb = asyncio.create_task(b.run())
        while not (a.stats.assigned and b.stats.assigned and len(a.stats.assigned | b.stats.assigned) == len(ends)
                   and not a.stats.assigned & b.stats.assigned and caught(sb, b.stats.assigned)):
            await asyncio.sleep(0.1)
        if standby:  # the standby has followed a's partitions up to their changelog end
            await asyncio.sleep(2.0)
        a.stop()
        await ta  # a has left the group (its own shutdown is not part of the failover)
        t0, before = time.perf_counter(), len(b.restores)
        while not (b.stats.assigned == set(ends) and caught(sb, ends)):
            await asyncio.sleep(0.05)
        took = time.perf_counter() - t0
        b.stop()
        await tb
        return took, sum(r.seconds for r in b.restores[before:])

    try:
        return asyncio.run(asyncio.wait_for(scenario(), 1800))
    finally:
        sa.close()
        sb.close()


def run_restore_bench(users: int = 100, lifetime_events: int = 10_000, cap: int = 1_000,
                      partitions: int = 4) -> dict:
    from longretriever.infra.kafka import broker

    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="lr-bench-restore-"))
    info = broker.start(tmp / "kafka")
    bs = info.bootstrap
    try:
        ev, it = write_synth(tmp / "syn.csv", users, lifetime_events, items=20_000, contexts=12, seed=17)
        ds = load_dataset(ev, it, "csv")
        log: EventLog = ds.events
        topic, plain = "user-events", "user-events-plain"
        ensure_topic(bs, topic, partitions)
        ensure_topic(bs, plain, partitions)
        replay(log, bs, topic, progress=False)
        replay(log, bs, plain, progress=False)
        # first ingest, with and without the changelog (same events, own topics)
        s0 = StateStore(tmp / "ingest-plain", ds.contexts, max_len=cap)
        _, w0 = _catch_up(_settings(bs, plain, "i0", max_sequence_len=cap), s0)
        s0.close()
        s1 = StateStore(tmp / "ingest-changelog", ds.contexts, max_len=cap)
        _, w1 = _catch_up(_settings(bs, topic, "i1", restore="changelog", max_sequence_len=cap), s1)
        state_events = s1.storage_bytes()[1]
        digest = s1.digest()
        s1.close()
        records, size = _changelog_size(bs, changelog_topic(topic))
        # rebuild a fresh state: source replay vs changelog restore
        s2 = StateStore(tmp / "replay", ds.contexts, max_len=cap)
        replay_s, _ = _catch_up(_settings(bs, topic, "r-source", max_sequence_len=cap), s2)
        ok_replay = s2.digest() == digest
        s2.close()
        s3 = StateStore(tmp / "restore", ds.contexts, max_len=cap)
        restore_s, w3 = _catch_up(_settings(bs, topic, "r-changelog", restore="changelog", max_sequence_len=cap), s3)
        ok_restore = s3.digest() == digest and w3.stats.applied == 0
        s3.close()
        (fo, fo_restore), (fo_sb, fo_sb_restore) = (_failover_s(bs, topic, tmp, ds.contexts, cap, standby=sb)
                                                    for sb in (False, True))
        return {
            "users": users, "history_events": len(log), "state_events": state_events, "cap": cap,
            "partitions": partitions,
            "source_replay_s": round(replay_s, 2), "changelog_restore_s": round(restore_s, 2),
            "restore_speedup": round(replay_s / restore_s, 2) if restore_s else None,
            "restore_partition_s": [round(r.seconds, 2) for r in w3.restores],
            "digests_equal": ok_replay and ok_restore,
            "changelog_records": records, "changelog_bytes": size,
            "worker_eps": round(w0.stats.ingest_eps()), "worker_eps_changelog": round(w1.stats.ingest_eps()),
            "changelog_vs_plain": round(w1.stats.ingest_eps() / w0.stats.ingest_eps(), 3)
            if w0.stats.ingest_eps() else None,
            "failover_s": round(fo, 2), "failover_s_standby": round(fo_sb, 2),
            "failover_restore_s": round(fo_restore, 2), "failover_restore_s_standby": round(fo_sb_restore, 2),
            "loadavg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        }
    finally:
        broker.stop(tmp / "kafka")
        shutil.rmtree(tmp, ignore_errors=True)
