"""The state updater as a faust-streaming agent (``stream --engine faust``), for teams that run
their own ``faust.App``: :func:`mount` adds the agent and its rebalance hook to an app.

It runs the very same path as the bulk engine (:class:`longretriever.stream.worker.StreamWorker`):
decode -> stage -> dead-letter -> changelog transaction -> one RocksDB commit with the offsets.
Exactly once, as there: the next offset of every partition is stored with the state; on
assignment each partition is positioned at that offset (restored from the changelog first with
``restore="changelog"``), messages below it are skipped. Events are acknowledged to faust only
after the RocksDB commit, so faust never commits a group offset the state does not have.

faust-streaming is an optional dependency: ``pip install 'longretriever[faust]'``. The bulk
engine is the default (docs/stream-design.md has the measured reason).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from longretriever.core.errors import ConfigError
from longretriever.core.settings import Settings
from longretriever.stream.state import StateStore
from longretriever.stream.worker import _FETCH_BYTES, StreamWorker, WorkerStats

log = logging.getLogger(__name__)
EXTRA = "pip install 'longretriever[faust]'"


def _faust():
    try:
        import faust
    except ImportError as exc:
        raise ConfigError(f"--engine faust needs faust-streaming, which is not installed: {EXTRA}") from exc
    return faust


class _FaustConsumer:
    """What StreamWorker reads of its consumer, answered by the faust app's consumer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def assignment(self) -> set:
        return {TopicPartition(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}

    def highwater(self, tp: TopicPartition) -> int | None:
        try:
            return self.app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - informational (lag gauge)
            return None

    async def commit(self, offsets: dict) -> None:
        return None  # faust commits the offsets of acknowledged events itself


class FaustStateWorker(StreamWorker):
    """StreamWorker whose messages come from a faust agent instead of ``getmany``."""

    def __init__(self, app: Any, settings: Settings, store: StateStore, on_applied=None) -> None:
        super().__init__(settings, store, on_applied)
        self.app = app
        self.consumer = _FaustConsumer(app)  # type: ignore[assignment]
        self.stream = None

    async def start(self) -> None:
        sec = self.s.kafka_security()
        if self.s.restore == "changelog":
            await self._start_changelog(sec)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.s.bootstrap, acks="all", linger_ms=5,
                                         max_request_size=_FETCH_BYTES + 65_536, **sec)
        await self.producer.start()

    async def close(self) -> None:
        await self.finish_inflight(raise_error=False)
        if self._commit_task is not None:
            await asyncio.gather(self._commit_task, return_exceptions=True)
        if self.producer is not None:
            await self.producer.stop()
        if self.publisher is not None:
            await self.publisher.stop()
        await self.close_restorer()

    async def on_assigned(self, assigned: set) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == self.s.topic)
        seeks = {}
        for p in mine:
            if self.s.restore == "changelog":
                await self.restore_partition(p)
            seeks[TopicPartition(self.s.topic, p)] = self.store.next_offset(p) or 0
        if seeks:
            await self.app.consumer.seek_wait({_tp(self.app, tp): off for tp, off in seeks.items()})
        self.stats.assigned = set(mine)
        if self.stats.assigned_at is None:
            self.stats.assigned_at = time.monotonic()
        log.info("assigned %s", mine)

    async def handle(self, events: list) -> None:
        """One batch of faust events: the shared decode -> stage -> commit path, then acks."""
        data: dict[TopicPartition, list] = {}
        for ev in events:
            m = ev.message
            data.setdefault(TopicPartition(m.topic, m.partition), []).append(m)
        for msgs in data.values():
            msgs.sort(key=lambda m: m.offset)
        await self._process(data)
        await self.finish_inflight()  # no pipeline here: acked only once in RocksDB
        for ev in events:
            ev.ack()  # only now: faust commits no offset the state does not have


def _tp(app: Any, tp: TopicPartition) -> Any:
    from faust.types import TP

    return TP(tp.topic, tp.partition)


def mount(app: Any, store: StateStore, settings: Settings, *, on_applied=None, batch: int = 10_000,
          within: float = 0.05) -> FaustStateWorker:
    """Add the state updater to ``app`` (a ``faust.App``): an agent on ``settings.topic`` that
    takes up to ``batch`` events (or what arrived within ``within`` seconds), and an
    ``on_partitions_assigned`` receiver that positions (and restores) the partitions. Returns
    the worker; call ``await worker.start()`` before the app starts consuming (done by
    :func:`run_faust_worker`, or in your own ``@app.task``) and ``await worker.close()`` at the end."""
    _faust()
    worker = FaustStateWorker(app, settings, store, on_applied)
    topic = app.topic(settings.topic, key_type=bytes, value_type=bytes)

    @app.agent(topic, name=f"longretriever-state-{settings.topic}")
    async def state_updater(stream):
        worker.stream = stream
        async for events in stream.noack().take_events(batch, within=within):
            await worker.handle(list(events))

    @app.on_partitions_assigned.connect
    async def _assigned(sender, assigned, **kwargs):
        await worker.on_assigned(assigned)

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **kwargs):
        async with worker.batch_lock:  # the batch in flight commits before the partitions go
            pass

    return worker


def run_faust_worker(settings: Settings, store: StateStore, until_caught_up: bool = False,
                     max_seconds: float | None = None) -> WorkerStats:
    """``stream --engine faust``: a faust app of our own with the agent mounted."""
    faust = _faust()
    import tempfile

    app = faust.App(f"{settings.group_id}", broker=f"kafka://{settings.bootstrap}", value_serializer="raw",
                    key_serializer="raw", web_enabled=False, store="memory://", datadir=tempfile.mkdtemp(),
                    consumer_auto_offset_reset="earliest", topic_disable_leader=True, stream_buffer_maxsize=65536,
                    broker_max_poll_records=settings.fetch_max_records)
    worker = mount(app, store, settings)

    async def main() -> None:
        await worker.start()
        targets = await worker._end_offsets_admin() if until_caught_up else None
        await app.start()
        t0 = time.monotonic()
        try:
            while True:
                await asyncio.sleep(0.05)
                if targets is not None and worker.stats.assigned and all(
                        (store.next_offset(p) or 0) >= targets.get(p, 0) for p in worker.stats.assigned):
                    break
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    break
        finally:
            worker.stats.seconds = time.monotonic() - t0
            await app.stop()
            await worker.close()

    asyncio.run(main())
    return worker.stats
