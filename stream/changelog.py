"""The state's compacted changelog (the Kafka Streams model): every state commit also publishes
the records it changed, so a worker that gets a partition it never had restores the *state*
(about the size of the kept events) instead of replaying the partition's whole history.

**Topic.** ``<topic>.state-changelog``, as many partitions as the source topic, compacted
(``cleanup.policy=compact``). Changelog partition ``p`` holds the state of the users of source
partition ``p``. Record key = the RocksDB key (``u<user>m`` meta, ``u<user>s<ctx><seg>`` a
segment), value = the RocksDB value, ``None`` (a tombstone) for a deleted key -- an evicted
segment -- so compaction keeps the topic about the size of the live state. The seen-item
buckets (``u<user>h<bucket>``) are *not* published: they are a function of the stored items,
and were 68% of the records of the ``bench ingest`` state (a user with u distinct items has
u/32 buckets), so a restore rebuilds them from the restored segments
(``stream.recovery.rebuild_seen``; a standby rebuilds what it applied whenever it has caught
up, a takeover what is left). A changelog written before this still holds bucket
records; a restore checks and ignores them. Key ``o<p>`` (value: the next source offset) is the
batch's **marker**: the state in the changelog up to it is the state after that source offset.

**Write ordering: one Kafka transaction per batch, then RocksDB.** The worker stages a batch,
dead-letters, then publishes the changed records and the markers in one transaction
(``read_committed`` readers see all of it or none), then commits the RocksDB batch together
with the source offsets and ``l<p>``: the changelog offset it has reflected up to. So:

- crash before the transaction commits: it is aborted; the changelog and the local state are
  both at the previous batch; the batch is consumed again.
- crash after the transaction, before RocksDB: the changelog is one batch *ahead* of the local
  state. On assignment the worker always reads its changelog partitions from its own ``l<p>`` to
  their end (the delta; Kafka Streams' checkpoint restore) and applies them, so the local state
  catches up to exactly the changelog's (including that batch and its marker) before consuming.
- the changelog never holds a partial batch, and never runs behind a committed local state
  except for that one crash window, where the local state is authoritative and catches up.

A restore that finds no records for a partition (changelog missing or empty), or a record it
cannot decode (garbled key or value), logs one line, counts it in
``longretriever_stream_restores_total{how="source_fallback"}``, removes what it had written and
falls back to replaying the source topic from offset 0.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rocksdict import WriteBatch

from longretriever.core.errors import ServiceUnavailable
from longretriever.stream import recovery
from longretriever.stream.records import UserMeta
from longretriever.stream.seen import decode_bucket
from longretriever.stream.segments import decode_segment

if TYPE_CHECKING:
    from longretriever.stream.state import StateStore

log = logging.getLogger(__name__)

SUFFIX = ".state-changelog"
_MARKER = b"o"
_Q = struct.Struct(">q")
_APPLY_EVERY = 20_000  # records per RocksDB write during a restore
# aiokafka's 16 KiB default batch puts ~5 segments in a produce batch, and the sender keeps one
# batch per partition in flight: a 4 MB transaction took ~60 sequential round trips
_BATCH_BYTES = 1_048_576


def changelog_topic(topic: str) -> str:
    return topic + SUFFIX


def topic_configs(fast_compaction: bool = False) -> dict[str, str]:
    """Compacted; ``fast_compaction`` rolls and cleans segments within seconds (tests, bench)."""
    conf = {"cleanup.policy": "compact", "min.insync.replicas": "1"}
    if fast_compaction:
        conf.update({"segment.ms": "200", "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "200",
                     "min.compaction.lag.ms": "0", "segment.bytes": "1048576"})
    return conf


def ensure_changelog(bootstrap: str, topic: str, security: dict[str, Any] | None = None,
                     fast_compaction: bool = False) -> int:
    """Create the compacted changelog of ``topic`` (as many partitions) if missing; idempotent.
    Returns the number of partitions."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    name = changelog_topic(topic)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="longretriever-admin", **(security or {}))
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka not reachable at {bootstrap}: {exc}") from exc
    try:
        desc = admin.describe_topics([topic])
        partitions = len(desc[0]["partitions"]) if desc and desc[0].get("partitions") else 0
        if not partitions:
            raise ServiceUnavailable(f"topic {topic} has no partitions at {bootstrap}")
        if name in set(admin.list_topics()):
            return partitions
        brokers = len(admin.describe_cluster().get("brokers", [])) or 1
        try:
            admin.create_topics([NewTopic(name, partitions, min(3, brokers), topic_configs=topic_configs(fast_compaction))])
        except TopicAlreadyExistsError:
            return partitions
        deadline = time.monotonic() + 30
        while name not in set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"changelog topic {name} not visible after 30 s")
            time.sleep(0.1)
        return partitions
    except KafkaError as exc:
        raise ServiceUnavailable(f"cannot create changelog topic {name}: {exc}") from exc
    finally:
        admin.close()


class GarbledRecord(Exception):
    """A changelog record that is not a state record this version can read."""


def check_record(key: bytes, value: bytes | None) -> None:
    """Refuse anything that is not a well-formed state record (raises :class:`GarbledRecord`)."""
    try:
        if key[:1] == _MARKER and len(key) == 5:
            if value is None or len(value) != 8:
                raise GarbledRecord(f"marker {key!r} with a {0 if value is None else len(value)}-byte value")
            return
        if key[:1] != b"u" or len(key) < 10:
            raise GarbledRecord(f"unknown key {key[:40]!r}")
        kind = key[9:10]
        if value is None:
            if kind in (b"m", b"s", b"h"):
                return
        elif kind == b"m" and len(key) == 10:
            UserMeta.unpack(value)
            return
        elif kind == b"s" and len(key) == 18:
            decode_segment(value)
            return
        elif kind == b"h" and len(key) == 14:
            decode_bucket(value)
            return
        raise GarbledRecord(f"key {key[:40]!r} with value of {0 if value is None else len(value)} bytes")
    except GarbledRecord:
        raise
    except Exception as exc:  # noqa: BLE001 - any decode failure of a value is a garbled record
        raise GarbledRecord(f"key {key[:40]!r}: {type(exc).__name__}: {exc}"[:300]) from exc


def records_of(pending: dict[bytes, bytes | None], partition_of: dict[int, int]) -> dict[int, list]:
    """The user records of a staged batch, per changelog partition (= the user's source partition)."""
    out: dict[int, list] = {}
    for k, v in pending.items():
        if k[:1] == b"u" and k[9:10] != b"h":  # seen-item buckets: rebuilt on restore
            out.setdefault(partition_of[_Q.unpack(k[1:9])[0]], []).append((k, v))
    return out


class ChangelogPublisher:
    """The transactional producer of one worker (its ``transactional_id`` fences a zombie
    instance of the same worker)."""

    def __init__(self, bootstrap: str, topic: str, transactional_id: str, security: dict[str, Any]) -> None:
        from aiokafka import AIOKafkaProducer

        self.topic = changelog_topic(topic)
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id,
                                         enable_idempotence=True, acks="all", linger_ms=2, max_batch_size=_BATCH_BYTES,
                                         max_request_size=8 * 1_048_576, **security)

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def publish(self, records: dict[int, list], offsets: dict[int, int]) -> dict[int, int]:
        """One transaction: every changed record and each partition's marker, appended to
        producer batches directly (``send`` per record cost ~30 us of Python each). Returns,
        per changelog partition, the offset after its last record (``l<p>`` to store)."""
        sent: list[tuple[Any, int]] = []  # (future of a batch -> its base offset, records in it)
        async with self.producer.transaction():
            for p in sorted(set(records) | set(offsets)):
                recs = list(records.get(p, ()))
                if p in offsets:
                    recs.append((_MARKER + struct.pack(">I", p), _Q.pack(offsets[p])))
                batch, n = self.producer.create_batch(), 0
                for k, v in recs:
                    if batch.append(key=k, value=v, timestamp=None) is None:  # full
                        sent.append((await self.producer.send_batch(batch, self.topic, partition=p), n))
                        batch, n = self.producer.create_batch(), 0
                        if batch.append(key=k, value=v, timestamp=None) is None:
                            raise ServiceUnavailable(f"changelog record {k[:20]!r} larger than a producer batch")
                    n += 1
                if n:
                    sent.append((await self.producer.send_batch(batch, self.topic, partition=p), n))
        ends: dict[int, int] = {}
        for f, n in sent:
            md = f.result()
            ends[md.partition] = max(ends.get(md.partition, 0), md.offset + n)
        return ends


@dataclass
class RestoreResult:
    partition: int
    records: int
    start: int
    end: int
    seconds: float
    how: str  # "changelog" | "delta" | "source_fallback"
    reason: str = ""
    garbled_key: bytes | None = None  # tombstoned by the worker, so compaction drops it


def restore_consumer(bootstrap: str, security: dict[str, Any]) -> Any:
    """The ``read_committed`` consumer restores read with (a worker keeps one for all of its
    restores: starting one costs a metadata round trip per partition restored)."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                            isolation_level="read_committed", auto_offset_reset="earliest",
                            max_partition_fetch_bytes=8 * 1_048_576, fetch_max_bytes=64 * 1_048_576, **security)


async def restore(store: "StateStore", bootstrap: str, topic: str, partition: int,
                  security: dict[str, Any], full: bool, consumer: Any = None) -> RestoreResult:
    """Bring ``partition``'s users in the local state up to the changelog: from offset 0
    (``full``: the partition was never here) or from the stored ``l<p>`` (the delta). Falls back
    (returns ``how="source_fallback"``) on a missing/empty changelog or a garbled record, after
    removing what it wrote, so the caller replays the source from 0."""
    from aiokafka import TopicPartition

    t0 = time.monotonic()
    ctopic = changelog_topic(topic)
    tp = TopicPartition(ctopic, partition)
    start = 0 if full else store.changelog_offset(partition) or 0
    c = consumer if consumer is not None else restore_consumer(bootstrap, security)
    if consumer is None:
        await c.start()
    written: set[bytes] = set()
    n = 0
    log.info("restoring partition %d from %s offset %d (%s)", partition, ctopic, start, "full" if full else "delta")
    try:
        await c.topics()  # refreshes the metadata
        parts = c.partitions_for_topic(ctopic)
        if not parts or partition not in parts:
            return _fallback(store, partition, written, full, t0, start, "no changelog topic")
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        if full and end == 0:
            return _fallback(store, partition, written, full, t0, start, "changelog partition is empty")
        c.seek(tp, start)
        wb, staged = WriteBatch(raw_mode=True), 0
        while await c.position(tp) < end:
            # short: a fetch that holds only a transaction marker returns no record but moves
            # the position past it (a delta after a standby starts at such a marker)
            batch = await c.getmany(tp, timeout_ms=50, max_records=_APPLY_EVERY)
            for rec in batch.get(tp, ()):
                try:
                    staged += _stage(wb, written, rec)
                except GarbledRecord as exc:
                    res = _fallback(store, partition, written, full, t0, start,
                                    f"garbled record at offset {rec.offset}: {exc}")
                    res.garbled_key = rec.key
                    return res
                n += 1
            if staged >= _APPLY_EVERY:
                recovery.commit_restore(store, wb, partition, written_users=written)
                wb, staged = WriteBatch(raw_mode=True), 0
        recovery.commit_restore(store, wb, partition, written_users=written, changelog_end=end)
        recovery.rebuild_seen(store, partition)
        how = "changelog" if full else "delta"
        res = RestoreResult(partition, n, start, end, time.monotonic() - t0, how)
        if n or full:
            log.info("restored partition %d from %s [%d, %d): %d records in %.2f s (%s)", partition, ctopic,
                     start, end, n, res.seconds, how)
        return res
    except (OSError, ServiceUnavailable) as exc:
        return _fallback(store, partition, written, full, t0, start, f"changelog unreadable: {exc}")
    finally:
        if consumer is None:
            await c.stop()
        else:
            # stop its fetches; the next assign() replaces the assignment (unsubscribe() made the
            # next metadata call and end_offsets wait ~0.5 s each: 1 s per restored partition)
            if tp in c.assignment():
                c.pause(tp)


def _stage(wb: WriteBatch, written: set[bytes], rec: Any) -> int:
    """Check one changelog record and stage it; 1 if it is a user record (its user noted)."""
    check_record(rec.key, rec.value)
    if rec.key[9:10] == b"h" and rec.key[:1] == b"u":
        pass  # a seen-item bucket of an older changelog: the restore rebuilds the index anyway
    elif rec.value is None:
        wb.delete(rec.key)
    else:
        wb.put(rec.key, rec.value)
    if rec.key[:1] == b"u":
        written.add(rec.key[:9])
        return 1
    return 0


def _fallback(store: "StateStore", partition: int, written: set[bytes], full: bool, t0: float, start: int,
              reason: str) -> RestoreResult:
    """Remove what this restore wrote (and, for a full restore, everything of the partition)
    so the source replay from offset 0 rebuilds it exactly."""
    recovery.drop_partition(store, partition, users=written)
    log.warning("partition %d: restore from %s impossible (%s); replaying the source topic from offset 0 "
                "instead", partition, "changelog", reason)
    return RestoreResult(partition, 0, start, start, time.monotonic() - t0, "source_fallback", reason)


class Standby:
    """Follows the changelog partitions this worker does not own and applies them to the local
    state (``--standby``), so taking one over later is a short delta restore (seconds) instead
    of a full one. Runs as a task on the worker's event loop; the partitions it follows change
    with every rebalance (:meth:`follow` / :meth:`stop_following`)."""

    def __init__(self, store: "StateStore", bootstrap: str, topic: str, partitions: int,
                 security: dict[str, Any]) -> None:
        self.store, self.bootstrap, self.security = store, bootstrap, security
        self.topic = changelog_topic(topic)
        self.following: set[int] = set(range(partitions))
        self.applied = 0
        self._task = None
        self._consumer = None
        self._dirty = True
        self._apply_lock = None
        self._marked = False  # users applied whose seen-item index is still to be rebuilt

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                          isolation_level="read_committed", auto_offset_reset="earliest",
                                          **self.security)
        await self._consumer.start()
        self._apply_lock = asyncio.Lock()
        self._task = asyncio.create_task(self._run(), name="changelog-standby")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - cancelled
                pass
        if self._consumer is not None:
            await self._consumer.stop()

    def follow(self, partitions: set[int]) -> None:
        self.following |= partitions
        self._dirty = True

    async def stop_following(self, partitions: set[int]) -> None:
        """Nothing of these partitions is applied after this returns (it waits for an apply in
        progress)."""
        self.following -= partitions
        self._dirty = True
        async with self._apply_lock:
            pass

    def _apply(self, partition: int, recs: list, end: int) -> None:
        """Stage and write one fetch of a followed partition (in a worker thread: the event
        loop keeps serving heartbeats and the owned partitions)."""
        wb, written = WriteBatch(raw_mode=True), set()
        for rec in recs:
            try:
                _stage(wb, written, rec)
            except GarbledRecord as exc:
                log.warning("standby: skipping garbled changelog record %s:%d (%s)", partition, rec.offset, exc)
        recovery.commit_restore(self.store, wb, partition, written, changelog_end=end)

    async def _run(self) -> None:
        from aiokafka import TopicPartition

        c = self._consumer
        while True:
            if self._dirty:
                self._dirty = False
                tps = [TopicPartition(self.topic, p) for p in sorted(self.following)]
                c.assign(tps)
                for tp in tps:
                    c.seek(tp, self.store.changelog_offset(tp.partition) or 0)
            data = await c.getmany(timeout_ms=200, max_records=_APPLY_EVERY)
            if not data and self._marked:  # caught up: rebuild the seen-item index of what it
                async with self._apply_lock:  # applied, so a takeover has nothing left to rebuild
                    for p in sorted(self.following):
                        await asyncio.to_thread(recovery.rebuild_seen, self.store, p)
                    self._marked = False
            for tp, recs in data.items():
                async with self._apply_lock:
                    if tp.partition not in self.following or self._dirty:
                        continue  # assigned to this worker meanwhile: its owner restores it
                    # the position, not the last record + 1: past the batch's commit marker, so a
                    # takeover's delta starts at the end, not at a marker it must wait past
                    end = max(recs[-1].offset + 1, await c.position(tp))
                    await asyncio.to_thread(self._apply, tp.partition, recs, end)
                    self._marked = True
                self.applied += len(recs)
                from longretriever.stream import metrics

                metrics.STANDBY_RECORDS.inc(len(recs))
