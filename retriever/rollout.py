"""Model rollout without downtime: follow the Milvus alias that ``longretriever index`` switches.

``index`` writes a new bundle version into a new collection and, once it is searchable,
points the alias at it (:mod:`~longretriever.retriever.milvus_build`). A running ``serve``
polls the alias (every ``interval`` seconds, and at once on :meth:`RolloutWatcher.poke`, which
``serve`` calls on SIGHUP). When the alias points at another collection, the watcher loads the
bundle of that version (the path recorded on the collection, else the ``serve --bundle``
path), checks it is that version, loads the collection, builds a new vector cache and its
refresher, and swaps the service's :class:`~longretriever.retriever.service.Generation` in one
assignment: requests in flight finish on the old generation, the next ones use the new, and
no answer mixes the two. If the bundle of the new version cannot be found yet, it keeps
serving the old one and tries again at the next poll.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from longretriever.core.bundle import Bundle
from longretriever.core.errors import LongRetrieverError
from longretriever.core.planner import context_sizes
from longretriever.retriever import milvus_requests as mr
from longretriever.retriever.milvus_index import MilvusIndex, Target
from longretriever.retriever.service import RetrieverService

log = logging.getLogger(__name__)

#: (version, recorded bundle path or None) -> the bundle of that version
BundleLoader = Callable[[str, "str | None"], Bundle]
#: (new bundle) -> (vector cache, refresher) for it, or (None, None)
CacheFactory = Callable[[Bundle], tuple[Any, Any]]


class RolloutWatcher:
    def __init__(self, index: MilvusIndex, service: RetrieverService, load: BundleLoader,
                 interval: float = 5.0, caches: CacheFactory | None = None,
                 on_swap: Callable[[Bundle, Any], None] | None = None) -> None:
        self.index, self.service, self.load = index, service, load
        self.interval = interval
        self.caches = caches
        self.on_swap = on_swap  # e.g. Serving: take over the new refresher, stop the old one
        self.swaps = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "RolloutWatcher":
        self._thread = threading.Thread(target=self._run, name="rollout", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def poke(self) -> None:
        """Check the alias now (SIGHUP)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - keep serving the current generation
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("rollout check failed (still serving %s): %s", self.service.model_version,
                            self.last_error)

    def check(self) -> bool:
        """Swap if the alias points at another collection; True when it swapped."""
        target = self.index.resolve()
        current = self.index.view
        if target is None or current is None or target.collection == current.collection:
            return False
        if target.version is None:
            raise LongRetrieverError(f"collection {target.collection} carries no bundle version")
        self._swap(target)
        return True

    def _swap(self, target: Target) -> None:
        bundle = self.load(target.version or "", self._recorded_path(target))
        if str(bundle.version) != target.version:
            raise LongRetrieverError(f"alias {self.index.collection} -> {target.collection} holds bundle "
                                     f"{target.version!r}, the bundle found is {bundle.version!r}")
        view = self.index.open_view(target, str(bundle.version), len(bundle.item_ids),
                                    context_sizes(bundle.item_contexts))
        cache, refresher = self.caches(bundle) if self.caches is not None else (None, None)
        gen = self.service.generation(bundle, self.index.pinned(view), cache)
        old = self.service.model_version
        self.index.use(view)  # reconnects now reload the new collection
        self.service.swap(gen)
        self.swaps += 1
        self.last_error = None
        if self.on_swap is not None:
            self.on_swap(bundle, refresher)
        log.warning("model rollout: %s -> %s (collection %s)", old, bundle.version, target.collection)

    def _recorded_path(self, target: Target) -> str | None:
        try:
            desc = self.index._call("describe", lambda: self.index.client.describe_collection(target.collection))
        except LongRetrieverError:
            raise
        except Exception:  # noqa: BLE001 - no properties: use the serve path
            return None
        props = desc.get("properties") or {}
        return props.get(mr.BUNDLE_PATH_PROPERTY)
