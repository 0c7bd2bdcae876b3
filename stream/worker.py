"""The stream worker: Kafka ``user-events`` -> per-user state, exactly once.

Consumption uses aiokafka (the Kafka driver faust-streaming itself runs on) in bulk: one
``getmany`` returns thousands of messages, which are decoded and applied to RocksDB as one
batch. Group membership and partition assignment come from the Kafka consumer group protocol;
see docs/stream-design.md for why the faust agent path is not on the hot loop.

Exactly once: the next offset of every partition is stored in the same RocksDB write batch as
the state it produced. On assignment a partition is resumed from that stored offset (or from
the beginning when this worker never had it: state is rebuilt from the source topic, which is
kept with infinite retention). Offsets are also committed to Kafka, but only for lag
monitoring; they are never used to position the consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Callable

import msgpack
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from longretriever.core.errors import ServiceUnavailable
from longretriever.core.settings import Settings
from longretriever.stream import metrics
from longretriever.core.codec import Rejection, decode_many
from longretriever.stream.state import StateStore

log = logging.getLogger(__name__)

OnApplied = Callable[[dict[int, set[int]]], None]
_FETCH_BYTES = 8 * 1_048_576  # consumer max_partition_fetch_bytes
_MAX_REASON = 512  # bytes of the lr.reason header (reasons can quote attacker-sized keys)
_VALUE, _KEY = attrgetter("value"), attrgetter("key")


@dataclass
class WorkerStats:
    messages: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    late: int = 0
    evicted: int = 0
    batches: int = 0
    seconds: float = 0.0
    last_batch_at: float | None = None  # monotonic time the last batch was committed
    assigned_at: float | None = None  # monotonic time partitions were first assigned

    def ingest_eps(self) -> float:
        """Events applied per second from the first assignment (group join excluded) to the
        last commit: the rate a benchmark compares with a raw consumer."""
        if self.assigned_at is None or self.last_batch_at is None or self.last_batch_at <= self.assigned_at:
            return 0.0
        return self.applied / (self.last_batch_at - self.assigned_at)

    def taken_eps(self) -> float:
        """Valid events taken per second (applied, duplicates and late alike), same window as
        :meth:`ingest_eps`: the rate of a pass that stores nothing new (a re-sent history)."""
        if self.assigned_at is None or self.last_batch_at is None or self.last_batch_at <= self.assigned_at:
            return 0.0
        return (self.applied + self.duplicates + self.late) / (self.last_batch_at - self.assigned_at)

    assigned: set[int] = field(default_factory=set)


class _Rebalance(ConsumerRebalanceListener):
    """Positions every newly assigned partition from the offset stored with the state."""

    def __init__(self, worker: "StreamWorker") -> None:
        self.w = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.w.batch_lock:  # a batch in flight commits (and publishes) before we give it up
            await self.w.finish_inflight()
        for tp in revoked:
            self.w.stats.assigned.discard(tp.partition)
        if self.w.standby is not None:
            self.w.standby.follow({tp.partition for tp in revoked})
        metrics.ASSIGNED.set(len(self.w.stats.assigned))
        log.info("revoked %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        fresh = []
        # nothing of these is consumed until each is restored and positioned (aiokafka starts
        # fetching newly assigned partitions while this callback runs)
        self.w.consumer.pause(*assigned)
        if self.w.standby is not None:
            await self.w.standby.stop_following({tp.partition for tp in assigned})
        for tp in assigned:
            if self.w.s.restore == "changelog":
                await self.w.restore_partition(tp.partition)
            off = self.w.store.next_offset(tp.partition)
            if off is None:
                fresh.append(tp)
            else:
                self.w.consumer.seek(tp, off)
        if fresh:
            await self.w.consumer.seek_to_beginning(*fresh)
        self.w.consumer.resume(*assigned)
        # Only now: aiokafka already fetches the partitions positioned above while the seek to
        # the beginning of the others is pending, so adding them one by one let
        # ``_caught_up`` (which looks at ``stats.assigned``) end an ``until_caught_up`` run
        # with a partition that was never consumed.
        self.w.stats.assigned.update(tp.partition for tp in assigned)
        if self.w.stats.assigned_at is None:
            self.w.stats.assigned_at = time.monotonic()
        metrics.ASSIGNED.set(len(self.w.stats.assigned))
        log.info("assigned %s", sorted(tp.partition for tp in assigned))


class StreamWorker:
    def __init__(self, settings: Settings, store: StateStore, on_applied: OnApplied | None = None,
                 client_id: str | None = None) -> None:
        self.s = settings
        self.client_id = client_id  # serving processes put their gRPC address here (routing)
        self.store = store
        self.on_applied = on_applied
        self.stats = WorkerStats()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._stop = asyncio.Event()
        self._commit_task: asyncio.Task | None = None
        self._summary = _Summary(self.stats)
        self.publisher = None  # stream.changelog.ChangelogPublisher when restore == "changelog"
        self.standby = None  # stream.changelog.Standby when standby
        self.restores: list = []  # stream.changelog.RestoreResult, one per assigned partition
        self.batch_lock = asyncio.Lock()  # one batch at a time; a revocation waits for it
        # with the changelog: the batch whose transaction + RocksDB commit runs while the next
        # batch is decoded and staged on top of it (stream.changelog, "pipeline")
        self._inflight: asyncio.Task | None = None
        self._restorer = None  # the consumer every changelog restore of this worker reads with

    def stop(self) -> None:
        self._stop.set()

    async def run(self, until_caught_up: bool = False, max_seconds: float | None = None,
                  max_events: int | None = None) -> WorkerStats:
        """Consume until stopped (or caught up / time / event budget reached)."""
        sec = self.s.kafka_security()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.s.bootstrap, group_id=self.s.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=_FETCH_BYTES,
            fetch_max_bytes=64 * 1_048_576, session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
            **({"client_id": self.client_id} if self.client_id else {}), **sec)
        # max_request_size: a dead-lettered record carries the original bytes, which may be as
        # large as anything the consumer can fetch (oversize payloads are rejected *because*
        # they exceed max_message_bytes); aiokafka's 1 MiB default raised
        # MessageSizeTooLargeError and crashed the worker on every restart (poison message)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.s.bootstrap, acks="all",
                                         linger_ms=5, max_request_size=_FETCH_BYTES + 65_536, **sec)
        if self.s.restore == "changelog":
            await self._start_changelog(sec)
        self.consumer.subscribe([self.s.topic], listener=_Rebalance(self))
        await self.consumer.start()
        await self.producer.start()
        t0 = time.monotonic()
        try:
            targets = await self._end_offsets() if until_caught_up else None
            while not self._stop.is_set():
                busy = self._inflight is not None and not self._inflight.done()
                data = await self.consumer.getmany(timeout_ms=0 if busy else self.s.fetch_timeout_ms,
                                                   max_records=self.s.fetch_max_records)
                if data:
                    await self._process(data)
                elif busy:  # nothing more to stage: finish the batch in flight now
                    await self.finish_inflight()
                self._summary.maybe_log()
                if targets is not None and self._caught_up(targets):
                    break
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    break
                if max_events is not None and self.stats.applied >= max_events:
                    break
            await self.finish_inflight()
        finally:
            await self.finish_inflight(raise_error=False)
            self.stats.seconds = time.monotonic() - t0
            self._summary.maybe_log(force=True)
            if self._commit_task is not None:
                await asyncio.gather(self._commit_task, return_exceptions=True)
            if self.standby is not None:
                await self.standby.stop()
            await self.producer.stop()
            await self.consumer.stop()
            if self.publisher is not None:
                await self.publisher.stop()
            await self.close_restorer()
        return self.stats

    async def close_restorer(self) -> None:
        if self._restorer is not None:
            await self._restorer.stop()
            self._restorer = None

    async def _start_changelog(self, security: dict) -> None:
        import hashlib

        from longretriever.stream import changelog as cl

        parts = await asyncio.to_thread(cl.ensure_changelog, self.s.bootstrap, self.s.topic, security)
        # a stable id per (group, state directory): a restarted worker fences its zombie
        tid = f"lr-{self.s.group_id}-{hashlib.sha256(str(self.store.path.resolve()).encode()).hexdigest()[:12]}"
        self.publisher = cl.ChangelogPublisher(self.s.bootstrap, self.s.topic, tid, security)
        await self.publisher.start()
        if self.s.standby:
            self.standby = cl.Standby(self.store, self.s.bootstrap, self.s.topic, parts, security)
            await self.standby.start()

    async def restore_partition(self, partition: int) -> None:
        from longretriever.stream import changelog as cl

        full = self.store.next_offset(partition) is None
        if self._restorer is None:
            self._restorer = cl.restore_consumer(self.s.bootstrap, self.s.kafka_security())
            await self._restorer.start()
        res = await cl.restore(self.store, self.s.bootstrap, self.s.topic, partition, self.s.kafka_security(), full,
                               consumer=self._restorer)
        self.restores.append(res)
        if res.garbled_key is not None:  # tombstone it: compaction then drops the garbled record
            await self.publisher.publish({partition: [(res.garbled_key, None)]}, {})
        metrics.RESTORES.labels(res.how).inc()
        metrics.RESTORE_SECONDS.observe(res.seconds)

    async def _end_offsets_admin(self) -> dict[int, int]:
        """End offsets of the source topic from a short-lived consumer of our own."""
        c = AIOKafkaConsumer(bootstrap_servers=self.s.bootstrap, group_id=None, **self.s.kafka_security())
        await c.start()
        try:
            await c.topics()
            tps = [TopicPartition(self.s.topic, p) for p in c.partitions_for_topic(self.s.topic) or ()]
            return {tp.partition: o for tp, o in (await c.end_offsets(tps)).items()}
        finally:
            await c.stop()

    async def _end_offsets(self) -> dict[int, int]:
        parts = None
        for _ in range(100):
            await self.consumer.topics()  # refreshes cluster metadata
            parts = self.consumer.partitions_for_topic(self.s.topic)
            if parts:
                break
            await asyncio.sleep(0.1)
        if not parts:
            raise ServiceUnavailable(f"topic {self.s.topic} has no partitions at {self.s.bootstrap}")
        tps = [TopicPartition(self.s.topic, p) for p in parts]
        ends = await self.consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}

    def _caught_up(self, targets: dict[int, int]) -> bool:
        if not self.stats.assigned:
            return False
        return all((self.store.next_offset(p) or 0) >= targets.get(p, 0) for p in self.stats.assigned)

    async def _process(self, data: dict[TopicPartition, list]) -> None:
        async with self.batch_lock:
            owned = self.consumer.assignment()
            data = {tp: m for tp, m in data.items() if tp in owned}  # revoked since the fetch: not ours
            if data:
                await self._process_owned(data)

    async def _process_owned(self, data: dict[TopicPartition, list]) -> None:
        """Decode + stage in a worker thread (the event loop stays free for gRPC and
        heartbeats), dead-letter, publish to the changelog, then commit state and offsets
        atomically."""
        t0 = time.perf_counter()
        staged = await asyncio.to_thread(self._decode_and_stage, data, int(time.time() * 1000))
        self.stats.messages += sum(len(m) for m in data.values())
        metrics.MESSAGES.inc(sum(len(m) for m in data.values()))
        if staged is None:
            return
        wb, res, rejected, offsets, records = staged
        try:
            await self._dead_letter(rejected)  # before the state commit: nothing is lost on a crash
            if self.publisher is not None:
                # the pipeline: batch N's transaction + commit ran while this batch was staged
                # on top of it; this batch's transaction starts only after N is in RocksDB
                await self.finish_inflight()
        except BaseException:
            self.store.discard_staged()
            raise
        if self.publisher is not None:
            self.store.hand_off()
            self._inflight = asyncio.create_task(self._publish_and_commit(wb, res, rejected, offsets, records, t0))
            return
        await asyncio.to_thread(self.store.commit, wb)
        self._committed(res, rejected, offsets, t0)

    async def _publish_and_commit(self, wb, res, rejected, offsets, records, t0: float) -> None:
        """The changelog transaction first, then RocksDB (stream.changelog)."""
        try:
            self.store.set_changelog_offsets(wb, await self.publisher.publish(records, offsets))
            await asyncio.to_thread(self.store.commit_handed_off, wb)
        except BaseException:
            self.store.discard_staged()
            raise
        self._committed(res, rejected, offsets, t0)

    async def finish_inflight(self, raise_error: bool = True) -> None:
        """Wait for the batch in flight (its transaction and RocksDB commit); re-raises its error."""
        task, self._inflight = self._inflight, None
        if task is None:
            return
        try:
            await task
        except BaseException:
            if raise_error:
                raise
            log.exception("the last batch's changelog commit failed; it is consumed again on restart")

    def _committed(self, res, rejected, offsets: dict[int, int], t0: float) -> None:
        self._account(res, len(rejected))
        for p, off in offsets.items():
            hw = self.consumer.highwater(TopicPartition(self.s.topic, p))
            if hw is not None:
                metrics.LAG.labels(str(p)).set(max(0, hw - off))
        if self._commit_task is None or self._commit_task.done():  # informational: never waited for
            self._commit_task = asyncio.create_task(self._commit_kafka(offsets))
        if self.on_applied and res.touched:
            self.on_applied(res.touched)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - t0)
        self.stats.last_batch_at = time.monotonic()

    def _decode_and_stage(self, data: dict[TopicPartition, list], now_ms: int):
        msgs: list = []
        offsets: dict[int, int] = {}
        for tp, part in data.items():
            start = self.store.next_offset(tp.partition) or 0
            if part and part[0].offset < start:
                part = [m for m in part if m.offset >= start]  # re-delivered: already in the state
            if part:
                msgs += part
                offsets[tp.partition] = part[-1].offset + 1
        if not offsets:
            return None
        d = decode_many(list(map(_VALUE, msgs)), list(map(_KEY, msgs)), now_ms,
                        self.s.max_message_bytes, self.s.max_batch_events)
        rejected = [(msgs[m], r) for m, r in d.rejected]
        u, first = np.unique(d.users, return_index=True)  # a user's messages are in one partition
        parts = np.fromiter((msgs[int(i)].partition for i in d.message[first]), np.int64, u.size)
        partition_of = dict(zip(u.tolist(), parts.tolist()))
        wb, res = self.store.prepare(d.users, d.items, d.ts, offsets, partition_of)
        records = None
        if self.publisher is not None:
            from longretriever.stream.changelog import records_of

            records = records_of(self.store.staged, partition_of)
        for i in res.late:
            msg = msgs[int(d.message[i])]
            raw, index = _element(msg.value, int(d.index[i]))
            rejected.append((msg, Rejection(
                f"late event: older than the user's newest event minus "
                f"{self.s.late_tolerance_ms} ms", raw, index)))
        return wb, res, rejected, offsets, records

    def _account(self, res, n_rejected: int) -> None:
        st = self.stats
        st.batches += 1
        st.applied += res.appended
        st.duplicates += res.duplicates
        st.late += len(res.late)
        st.dead_lettered += n_rejected
        st.evicted += res.evicted
        metrics.EVENTS.labels("applied").inc(res.appended)
        metrics.EVENTS.labels("duplicate").inc(res.duplicates)
        metrics.EVENTS.labels("late").inc(len(res.late))
        metrics.EVENTS.labels("evicted").inc(res.evicted)
        metrics.EVENTS.labels("dlq").inc(n_rejected)

    async def _dead_letter(self, rejected: list[tuple]) -> None:
        if not rejected:
            return
        futures = []
        for msg, r in rejected:
            headers = [("lr.reason", r.reason.encode()[:_MAX_REASON]), ("lr.source.topic", msg.topic.encode()),
                       ("lr.source.partition", str(msg.partition).encode()),
                       ("lr.source.offset", str(msg.offset).encode())]
            if r.index is not None:
                headers.append(("lr.batch.index", str(r.index).encode()))
            futures.append(await self.producer.send(self.s.dlq_topic, value=r.raw, key=msg.key,
                                                    headers=headers))
        await asyncio.gather(*futures)

    async def _commit_kafka(self, offsets: dict[int, int]) -> None:
        """Informational commit (lag tooling); the authoritative offsets live in the state."""
        try:
            await self.consumer.commit({TopicPartition(self.s.topic, p): o for p, o in offsets.items()})
        except (CommitFailedError, KafkaError) as exc:
            log.debug("informational offset commit skipped: %s", exc)


class _Summary:
    """One INFO line per ``every`` seconds with the outcomes since the previous line."""

    FIELDS = ("messages", "applied", "duplicates", "late", "dead_lettered", "evicted")

    def __init__(self, stats: WorkerStats, every: float = 60.0) -> None:
        self.stats, self.every = stats, every
        self.last = time.monotonic()
        self.seen = {f: 0 for f in self.FIELDS}

    def maybe_log(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        cur = {f: getattr(self.stats, f) for f in self.FIELDS}
        delta = {f: cur[f] - self.seen[f] for f in self.FIELDS}
        if any(delta.values()) or not force:
            log.info("last %.0f s: %s; partitions %s", now - self.last,
                     ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in delta.items()),
                     sorted(self.stats.assigned))
        self.last, self.seen = now, cur


def _element(value: bytes, index: int) -> tuple[bytes, int | None]:
    """One event of a (valid) message: (bytes, position) of an array element, or the whole
    message and None for a single-event message (as for malformed whole messages)."""
    obj = msgpack.unpackb(value, strict_map_key=False)
    if isinstance(obj, list):
        return msgpack.packb(obj[index], use_bin_type=True), index
    return value, None


def run_worker(settings: Settings, store: StateStore, until_caught_up: bool = False,
               max_seconds: float | None = None, on_applied: OnApplied | None = None) -> WorkerStats:
    """Blocking helper for the CLI and tests."""
    worker = StreamWorker(settings, store, on_applied)
    return asyncio.run(worker.run(until_caught_up=until_caught_up, max_seconds=max_seconds))
