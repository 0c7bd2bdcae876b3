"""The retrieval service: state store + bundle + Milvus, through the one planner
(:mod:`longretriever.core.planner`).

``retrieve`` is synchronous (RocksDB reads, the encoder and Milvus calls block); the gRPC
server runs it in a worker thread. Query vectors come from a fresh entry of the
:class:`longretriever.retriever.refresh.VectorCache` when the stamp matches, otherwise they
are computed now with one batched encoder call across all missing contexts.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from longretriever.core import planner as pl
from longretriever.core.bundle import Bundle
from longretriever.core.errors import BundleError, InputError
from longretriever.core.multicontext import DEFAULT_WINDOW, Candidate
from longretriever.core.ranking import ExactSearch
from longretriever.core.sequence import UserSequence
from longretriever.retriever import metrics
from longretriever.retriever.history import StateHistory, StateReader
from longretriever.retriever.refresh import VectorCache, window_stamp

log = logging.getLogger(__name__)


@dataclass
class RetrieveResult:
    user_id: int
    candidates: list[Candidate]
    model_version: str
    watermark: str
    fallback: bool
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class SequenceResult:
    user_id: int
    items: np.ndarray
    ts: np.ndarray  # ms since the epoch
    contexts: np.ndarray
    watermark: str
    total: int | None = None  # events stored (in the context); None: len(items)


class _TimedSearch:
    """The service's searcher (or its in-memory :class:`~longretriever.core.planner.UnseenSearcher`),
    with the time spent inside it (the "milvus" and "exact" stages)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.ms = inner, 0.0

    def _timed(self, call, *args):
        t = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.ms += (time.perf_counter() - t) * 1000

    def search_contexts(self, vectors, topk, timeout=None):
        return self._timed(self.inner.search_contexts, vectors, topk, timeout)

    def search_unseen(self, context, vector, n, seen_mask, depth=0):
        return self._timed(self.inner.search_unseen, context, vector, n, seen_mask, depth)


def format_watermark(wm: dict[int, int] | None) -> str:
    """``partition:next_offset`` pairs, comma separated, by partition (empty if unknown)."""
    return ",".join(f"{p}:{o}" for p, o in sorted((wm or {}).items()))


@dataclass(frozen=True)
class Generation:
    """What one answer is computed from: one bundle, the planner's view of it, the Milvus
    collection of that bundle version and its vector cache. Swapped as a whole (model rollout,
    :mod:`longretriever.retriever.rollout`); a request reads it once, so no answer mixes two."""

    bundle: Bundle
    catalog: pl.Catalog
    index: pl.Searcher
    cache: VectorCache | None
    names: tuple[str, ...]
    deep: pl.UnseenSearcher | None = None  # contexts exclusion left short (planner.fetch_streams)


class _LazyExact:
    """Exact in-memory search over the bundle's item vectors (``ranking.ExactSearch``), built
    on first use: the contexts whose best items the user has mostly seen (ranked over their
    unseen items, ``search_unseen``).
    Costs one context-sorted copy of the item vectors once built (N x d x 4 bytes)."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._search: ExactSearch | None = None
        self._lock = threading.Lock()

    def search_unseen(self, context, vector, n, seen_mask, depth=0):
        if self._search is None:
            with self._lock:
                if self._search is None:
                    self._search = ExactSearch.of(self.bundle)
        return self._search.search_unseen(context, vector, n, seen_mask, depth)


class RetrieverService:
    def __init__(self, bundle: Bundle, index: pl.Searcher, state: StateReader,
                 cache: VectorCache | None = None, window: int = DEFAULT_WINDOW,
                 context_choice: str | None = None, min_slots: int = 0) -> None:
        self.state = state
        self.window = window
        self.context_choice = context_choice
        self.min_slots = min_slots  # adaptive contexts (planner.worth_a_search); 0 = off
        self.gen = self.generation(bundle, index, cache)

    def generation(self, bundle: Bundle, index: pl.Searcher, cache: VectorCache | None) -> Generation:
        # the planner's view of the bundle; the same Catalog.of as the offline reference
        catalog = pl.Catalog.of(bundle, self.context_choice, self.window, self.min_slots)
        scorer = catalog.scorer
        if scorer is not None and scorer.window > self.window:
            raise BundleError(f"context predictor reads {scorer.window} events, the service "
                              f"window is {self.window}")
        return Generation(bundle, catalog, index, cache, tuple(bundle.context_names), _LazyExact(bundle))

    def swap(self, gen: Generation) -> None:
        """Serve ``gen`` from the next request on (requests in flight finish on the old one)."""
        self.gen = gen

    # the current generation's parts (callers outside a request)
    bundle = property(lambda self: self.gen.bundle)
    index = property(lambda self: self.gen.index)
    cache = property(lambda self: self.gen.cache)
    catalog = property(lambda self: self.gen.catalog)
    names = property(lambda self: list(self.gen.names))

    @property
    def model_version(self) -> str:
        return str(self.bundle.version)

    def context_name(self, c: int) -> str:
        names = self.gen.names
        return names[c] if 0 <= c < len(names) else str(c)

    def context_id(self, name: str) -> int:
        """A context name of the bundle, or its decimal id (ASCII digits, in range)."""
        names = self.names
        if name in names:
            return names.index(name)
        # str.isdigit() also accepts e.g. "²", which int() refuses: check ASCII explicitly
        if name.isascii() and name.isdigit() and len(name) <= 6 and int(name) < len(names):
            return int(name)
        raise InputError(f"unknown context {name[:100]!r}; known: {', '.join(names[:20])}")

    def watermark(self) -> str:
        try:
            return format_watermark(self.state.watermark())
        except Exception:  # noqa: BLE001 - the watermark is informative only
            return ""

    def retrieve(self, user_id: int, k: int, max_contexts: int = 8, exclude_seen: bool = True,
                 timeout: float | None = None) -> RetrieveResult:
        pl.validate_request(user_id, k, max_contexts)
        with self.state.reading():  # one consistent snapshot, seen-item checks included
            return self._retrieve(user_id, k, max_contexts, exclude_seen, timeout)

    def _retrieve(self, user_id: int, k: int, max_contexts: int, exclude_seen: bool,
                  timeout: float | None) -> RetrieveResult:
        t0 = time.perf_counter()
        gen = self.gen  # read once: the whole answer comes from one bundle version
        version = str(gen.bundle.version)
        timings: dict[str, float] = {}
        history = StateHistory(self.state, user_id)
        wm = self.watermark()  # read before the state: the answer reflects at least this much
        plan = pl.plan_query(history, k, max_contexts, gen.catalog, exclude_seen)
        if plan is None:
            cands = pl.fallback_candidates(gen.bundle.popular, gen.catalog.sizes, k, max_contexts)
            timings["total"] = (time.perf_counter() - t0) * 1000
            metrics.FALLBACKS.inc()
            metrics.observe_timings(timings)
            return RetrieveResult(user_id, cands, version, wm, True, timings)
        timings["state"] = (time.perf_counter() - t0) * 1000

        t1 = time.perf_counter()
        vectors = self._vectors(gen, user_id, plan, history)
        timings["encode"] = (time.perf_counter() - t1) * 1000

        t2 = time.perf_counter()
        remaining = None if timeout is None else max(0.05, timeout - (time.perf_counter() - t0))
        timed = _TimedSearch(gen.index)
        deep = _TimedSearch(gen.deep) if gen.deep is not None else None
        cands = pl.answer(plan, vectors, timed, history, gen.catalog.sizes, remaining, deep)
        timings["milvus"] = timed.ms
        timings["exact"] = deep.ms if deep is not None else 0.0  # short contexts, in memory, with their seen lookups
        timings["merge"] = (time.perf_counter() - t2) * 1000 - timed.ms - timings["exact"]  # exclusion + slot filling
        timings["total"] = (time.perf_counter() - t0) * 1000
        metrics.observe_timings(timings)
        return RetrieveResult(user_id, cands, version, wm, False, timings)

    def _vectors(self, gen: Generation, user_id: int, plan: pl.QueryPlan,
                 history: StateHistory) -> dict[int, np.ndarray]:
        """The plan's query vectors: fresh cache entries, the rest in one encoder call."""
        if gen.cache is None:
            return pl.encode_plan(plan, gen.bundle)
        seq = history.recent(self.window)
        stamp = window_stamp(seq.items, seq.ts)
        out: dict[int, np.ndarray] = {}
        missing = []
        for cq in plan.contexts:
            v = gen.cache.get(user_id, cq.context, stamp)
            if v is None:
                missing.append(cq.context)
            else:
                out[cq.context] = v
        for c, v in pl.encode_plan(plan, gen.bundle, only=missing).items():
            out[c] = v
            gen.cache.put(user_id, c, stamp, v.copy())
        return out

    def user_sequence(self, user_id: int, context: int | None = None,
                      limit: int | None = None) -> SequenceResult:
        """The user's newest ``limit`` events (all when None), optionally of one context,
        oldest first; reads only the tail segments it needs. ``total`` counts them all."""
        if user_id < 0:
            raise InputError(f"user_id must be >= 0, got {user_id}")
        if limit is not None and limit < 1:
            raise InputError(f"limit must be >= 1, got {limit}")
        wm = self.watermark()
        with self.state.reading():
            counts = self.state.context_counts(user_id)
            total = counts.get(context, 0) if context is not None else sum(counts.values())
            if limit is None:
                seq = self.state.sequence(user_id, context)
            elif context is None:
                seq = self.state.recent(user_id, limit)
            else:
                items, ts = self.state.context_tail(user_id, context, limit)
                seq = UserSequence(items, ts, np.full(items.size, context, np.int32))
        if seq is None:
            e = np.zeros(0, np.int64)
            return SequenceResult(user_id, e, e, np.zeros(0, np.int32), wm, 0)
        return SequenceResult(user_id, seq.items, seq.ts, seq.contexts, wm, total)
