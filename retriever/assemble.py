"""Wiring of the serving process: bundle + state + Milvus + refresh -> RetrieverService.
Shared by ``longretriever serve``, the demo and the integration tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longretriever.core.bundle import Bundle
from longretriever.core.contexts import ContextTable
from longretriever.core.errors import BundleError, ConfigError
from longretriever.core.planner import context_sizes
from longretriever.core.settings import Settings
from longretriever.retriever.bundle import load_bundle
from longretriever.retriever.milvus_index import MilvusIndex
from longretriever.retriever.refresh import Refresher, VectorCache
from longretriever.retriever.rollout import RolloutWatcher
from longretriever.retriever.service import RetrieverService
from longretriever.stream.state import StateStore


@dataclass
class Serving:
    bundle: Bundle  # the bundle served at start (service.bundle after a rollout)
    store: StateStore
    index: MilvusIndex
    service: RetrieverService
    refresher: Refresher | None
    watcher: RolloutWatcher | None = None

    def on_applied(self, touched) -> None:
        """The stream worker's hook: refresh vectors of the generation being served."""
        r = self.refresher
        if r is not None:
            r.on_applied(touched)

    def _swapped(self, bundle: Bundle, refresher: Refresher | None) -> None:
        old, self.refresher = self.refresher, refresher
        if old is not None:
            old.stop()

    def watch_rollouts(self, bundle_path: Path, interval: float, cache_entries: int,
                       intra_op_threads: int = 1) -> RolloutWatcher | None:
        """Follow the alias ``index`` switches (Milvus server only)."""
        if interval <= 0 or not self.index.is_server:
            return None

        def load(version: str, recorded: str | None) -> Bundle:
            for p in filter(None, (recorded, str(bundle_path))):
                if Path(p).is_dir():
                    b = load_bundle(Path(p), intra_op_threads=intra_op_threads)
                    if str(b.version) == version:
                        return b
            raise BundleError(f"no bundle of version {version!r} at {recorded or '-'} or {bundle_path}")

        def caches(b: Bundle) -> tuple[VectorCache | None, Refresher | None]:
            if cache_entries <= 0:
                return None, None
            cache = VectorCache(cache_entries)
            sizes = context_sizes(b.item_contexts)
            return cache, Refresher(b, self.store, cache, allowed=set(sizes)).start()

        self.watcher = RolloutWatcher(self.index, self.service, load, interval, caches, self._swapped).start()
        return self.watcher

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.refresher is not None:
            self.refresher.stop()
        self.index.close()
        self.store.close()


def state_contexts(bundle: Bundle, items: Path | None) -> ContextTable:
    """The item -> context table the state must use: the bundle's own (what the model was
    trained with), so serving computes exactly what training did. An explicit items file must
    agree with it on every item the bundle knows."""
    ids = np.asarray(bundle.item_ids, np.int64)
    order = np.argsort(ids, kind="stable")
    table = ContextTable(tuple(bundle.context_names), ids[order],
                         np.asarray(bundle.item_contexts, np.int32)[order])
    if items is not None:
        given = ContextTable.from_csv(items)
        names_given = np.array(given.names, dtype=object)[given.context_of(ids)]
        names_bundle = np.array(table.names, dtype=object)[table.context_of(ids)]
        if not (names_given == names_bundle).all():
            raise ConfigError(f"{items} assigns contexts that differ from the bundle's; "
                              "serve with the items file the bundle was trained on (or none)")
    return table


def open_serving(bundle_path: Path, milvus_uri: str, collection: str, settings: Settings,
                 cache_entries: int = 1_000_000, intra_op_threads: int = 1, ef: int | None = None,
                 reindex_contexts: bool = False) -> Serving:
    """``reindex_contexts``: a state built with another item -> context table than the
    bundle's is re-derived under the bundle's (otherwise it is refused, ConfigError)."""
    bundle = load_bundle(bundle_path, intra_op_threads=intra_op_threads)
    choice = settings.context_choice
    bundle.context_scorer(choice)  # refuse an unusable choice before opening state or Milvus
    store = StateStore(settings.state_dir, state_contexts(bundle, settings.items_path),
                       max_len=settings.max_sequence_len, segment_events=settings.segment_events,
                       late_tolerance_ms=settings.late_tolerance_ms, reindex_contexts=reindex_contexts)
    index = MilvusIndex(milvus_uri, collection, ef=ef)
    sizes = context_sizes(bundle.item_contexts)
    try:
        view = index.open(bundle.version, len(bundle.item_ids), sizes)  # BundleError on version mismatch
    except BaseException:
        index.close()  # do not leak the state's RocksDB lock or the Milvus connection
        store.close()
        raise
    cache = VectorCache(cache_entries) if cache_entries > 0 else None
    refresher = Refresher(bundle, store, cache, allowed=set(sizes)).start() if cache is not None else None
    # pinned to this collection: after a rollout, requests still in flight keep searching it
    service = RetrieverService(bundle, index.pinned(view), store, cache, context_choice=choice)
    return Serving(bundle, store, index, service, refresher)
