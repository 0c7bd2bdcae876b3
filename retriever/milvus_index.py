"""Milvus as the planner's :class:`~longretriever.core.planner.Searcher`: per-context searches
on the collection of one bundle version.

* Layout (docs/milvus.md): on a Milvus server one partition per context, each with its own
  index (HNSW for scale, FLAT for exact parity), collections versioned behind an alias; on
  Milvus Lite (no partitions, no aliases) one collection and ``filter="context == c"``.
* The per-context searches of one query run concurrently; concurrent searches of the same
  context from different requests are merged into one multi-vector request
  (:mod:`~longretriever.retriever.milvus_coalesce`).
* A :class:`CollectionView` pins one collection (one bundle version): the service swaps views
  together with the bundle between requests when ``index`` switches the alias
  (:mod:`~longretriever.retriever.rollout`).

Connection handling (reconnects, retries, errors) is in
:mod:`~longretriever.retriever.milvus_conn`; building in
:mod:`~longretriever.retriever.milvus_build`; pure request building in
:mod:`~longretriever.retriever.milvus_requests`.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from longretriever.core.errors import BundleError, ServiceUnavailable
from longretriever.core.multicontext import Candidate
from longretriever.retriever import milvus_requests as mr
from longretriever.retriever.milvus_coalesce import Coalescer
from longretriever.retriever.milvus_conn import (MilvusConnection, SearchCall,  # noqa: F401 - re-exported
                                                 _is_transient, _probe_tcp, _release_dead_lite_server)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What an alias (or a plain collection name) resolves to."""

    collection: str
    version: str | None


@dataclass(frozen=True)
class CollectionView:
    """One opened collection: its name, bundle version, layout, index type and context sizes."""

    collection: str
    version: str
    layout: str
    index_type: str
    sizes: Mapping[int, int] | None


class MilvusIndex(MilvusConnection):
    """Item vectors of one bundle in one Milvus collection (or an alias of one).

    ``ef``: HNSW search breadth (at least the limit). ``coalesce``: merge concurrent searches
    of one context into one request. Reconnects by itself (see :class:`MilvusConnection`)."""

    def __init__(self, uri: str = mr.DEFAULT_URI, collection: str = mr.DEFAULT_COLLECTION, *,
                 token: str | None = None, timeout: float = 10.0, max_workers: int = 32,
                 attempts: int = 3, client_factory: Callable[..., Any] | None = None,
                 ef: int | None = None, coalesce: bool = True) -> None:
        super().__init__(uri, collection, token=token, timeout=timeout, attempts=attempts,
                         client_factory=client_factory)
        # blocking searches only (a client that is not connected yet, test fakes): a pymilvus
        # client's searches leave as gRPC futures (MilvusConnection.start_search)
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="milvus")
        self.ef = ef
        self.coalescer = Coalescer() if coalesce else None
        self.view: CollectionView | None = None
        self._server: bool | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()

    @property
    def is_server(self) -> bool:
        """A Milvus server (partitions, aliases); False for Milvus Lite, also when Lite is
        reached over TCP (it answers GetVersion with UNIMPLEMENTED)."""
        if self._server is None:
            if mr.is_lite_uri(self.uri) or not hasattr(self.client, "get_server_version"):
                self._server = False
            else:
                try:
                    self._call("version", lambda: self.client.get_server_version())
                    self._server = True
                except ServiceUnavailable:
                    raise
                except Exception:  # noqa: BLE001 - UNIMPLEMENTED: Milvus Lite
                    self._server = False
        return self._server

    # ---- metadata -----------------------------------------------------------------------------
    def exists(self, name: str | None = None) -> bool:
        n = name or self.collection
        return bool(self._call("has_collection", lambda: self.client.has_collection(n)))

    def resolve(self, name: str | None = None) -> Target | None:
        """The collection behind ``name`` (default: this index's alias or collection) and the
        bundle version it holds; None when there is none."""
        n = name or self.collection
        if not self.exists(n):
            return None
        desc = self._call("describe", lambda: self.client.describe_collection(n))
        return Target(str(desc.get("collection_name") or n), mr.version_from_description(desc.get("description")))

    def stored_version(self) -> str | None:
        t = self.resolve()
        return None if t is None else t.version

    def count(self, name: str | None = None, strong: bool = False) -> int:
        n = name or (self.view.collection if self.view else self.collection)
        kw = {"consistency_level": "Strong"} if strong and self.real else {}
        res = self._call("count", lambda: self.client.query(n, filter="", output_fields=["count(*)"], **kw))
        return int(res[0]["count(*)"]) if res else 0

    def index_type(self, name: str | None = None) -> str:
        n = name or (self.view.collection if self.view else self.collection)
        try:
            info = self._call("describe_index", lambda: self.client.describe_index(n, mr.VECTOR_FIELD))
            return str((info or {}).get("index_type") or "FLAT").upper()
        except ServiceUnavailable:
            raise
        except Exception:  # noqa: BLE001 - no index yet
            return "FLAT"

    def layout_of(self, name: str) -> str:
        """``partition`` when the collection has per-context partitions, else ``filter``."""
        if not self.is_server or not hasattr(self.client, "list_partitions"):
            return "filter"
        parts = self._call("list_partitions", lambda: self.client.list_partitions(name))
        return "partition" if any(mr.context_of_partition(p) is not None for p in parts) else "filter"

    # ---- build --------------------------------------------------------------------------------
    def build(self, bundle: Any, index: str = "flat", batch: int = 5000, progress: bool = True,
              drop_old_after: float = 0.0) -> dict[str, Any]:
        """Write ``bundle`` into Milvus and return once it is searchable (see
        :func:`longretriever.retriever.milvus_build.build`)."""
        from longretriever.retriever.milvus_build import build

        return build(self, bundle, index, batch, progress, drop_old_after)

    # ---- serve --------------------------------------------------------------------------------
    def open_view(self, target: Target, expected_version: str, expected_items: int | None = None,
                  context_sizes: Mapping[int, int] | None = None) -> CollectionView:
        """Check ``target`` holds the serving bundle (BundleError if not), load it and return a
        view pinned to it. Does not change :attr:`view`."""
        mr.check_found_version(target.version, expected_version, target.collection)
        self._call("load", lambda: self.client.load_collection(target.collection))
        if expected_items is not None:
            n = self.count(target.collection)
            if n != expected_items:
                raise BundleError(f"collection {target.collection!r} has {n} items, the bundle "
                                  f"{expected_items}: indexing did not finish; re-run `longretriever index`")
        return CollectionView(target.collection, expected_version, self.layout_of(target.collection),
                              self.index_type(target.collection),
                              dict(context_sizes) if context_sizes is not None else None)

    def open(self, expected_version: str, expected_items: int | None = None,
             context_sizes: Mapping[int, int] | None = None) -> CollectionView:
        """Resolve the alias, check the collection matches the serving bundle (BundleError if
        not), load it and serve from it."""
        target = self.resolve()
        if target is None:
            raise BundleError(f"collection {self.collection!r} not found at {self.uri}; "
                              f"run `longretriever index` first")
        self.use(self.open_view(target, expected_version, expected_items, context_sizes))
        return self.view  # type: ignore[return-value]

    def use(self, view: CollectionView) -> None:
        """Serve from ``view`` (reloaded on reconnect)."""
        self.view = view
        self._load_on_connect = view.collection

    def pinned(self, view: CollectionView) -> "PinnedSearcher":
        """A :class:`~longretriever.core.planner.Searcher` on ``view`` only (one bundle version)."""
        return PinnedSearcher(self, view)

    def _start(self, view: CollectionView, context: int) -> Callable[..., SearchCall]:
        """Sends one multi-vector search of ``context`` on ``view`` (see :meth:`start_search`)."""
        if view.layout == "partition":
            part, expr = mr.partition_name(context), ""
        else:
            part, expr = None, mr.context_filter(context)

        rows = int((view.sizes or {}).get(context, 0))

        def start(vectors: Any, limit: int, timeout: float | None) -> SearchCall:
            return self.start_search(view.collection, list(vectors), limit, partition=part, expr=expr,
                                     params=mr.search_params(view.index_type, limit, self.ef, rows),
                                     timeout=timeout, submit=self._pool.submit)
        return start

    def search_view(self, view: CollectionView, vectors: Mapping[int, np.ndarray], topk: Mapping[int, int],
                    timeout: float | None = None) -> dict[int, list[Candidate]]:
        """Per-context exact(-enough) top-k on ``view``: every per-context search is sent
        before any answer is read. Contexts with topk 0 (or no items) map to an empty list."""
        out: dict[int, list[Candidate]] = {int(c): [] for c in topk}
        sent: list[tuple[mr.ContextSearch, Any]] = []
        for s in mr.build_context_searches(vectors, topk, view.sizes):
            start = self._start(view, s.context)
            sent.append((s, start([s.vector], s.limit, timeout) if self.coalescer is None else
                         self.coalescer.submit((view.collection, s.context), s.vector, s.limit, timeout, start)))
        for s, call in sent:
            got = call.result()
            ids, scores = got[0] if self.coalescer is None else got
            out[s.context] = mr.to_candidates(ids, scores, s.context, s.limit)
        return out

    def search_contexts(self, vectors: Mapping[int, np.ndarray], topk: Mapping[int, int],
                        timeout: float | None = None) -> dict[int, list[Candidate]]:
        view = self.view or CollectionView(self.collection, "", "filter", "FLAT", None)  # not opened
        return self.search_view(view, vectors, topk, timeout)


class PinnedSearcher:
    """A Searcher bound to one :class:`CollectionView` of a :class:`MilvusIndex`."""

    def __init__(self, index: MilvusIndex, view: CollectionView) -> None:
        self.index, self.view = index, view

    def search_contexts(self, vectors: Mapping[int, np.ndarray], topk: Mapping[int, int],
                        timeout: float | None = None) -> dict[int, list[Candidate]]:
        return self.index.search_view(self.view, vectors, topk, timeout)
