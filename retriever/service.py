"""The retrieval service: state store + bundle + Milvus, wired through the pure planner.

``retrieve`` is synchronous (RocksDB reads, the encoder and Milvus calls block); the gRPC
server runs it in a worker thread. Query vectors come from a fresh entry of the
:class:`longretriever.retriever.refresh.VectorCache` when the stamp matches, otherwise they are computed now
with one batched ``Bundle.encode`` call across all missing contexts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from longretriever.core.errors import BundleError, InputError
from longretriever.core.multicontext import DEFAULT_WINDOW, Candidate
from longretriever.retriever import metrics
from longretriever.retriever import query as q
from longretriever.retriever.milvus_requests import context_sizes as _context_sizes
from longretriever.retriever.refresh import VectorCache, window_stamp

log = logging.getLogger(__name__)


class SearchBackend(Protocol):
    def search_contexts(self, vectors: dict[int, np.ndarray], topk: dict[int, int],
                        timeout: float | None = None) -> dict[int, list[Candidate]]: ...


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
    ts: np.ndarray
    contexts: np.ndarray
    watermark: str


def format_watermark(wm: dict[int, int] | None) -> str:
    """``partition:next_offset`` pairs, comma separated, by partition (empty if unknown)."""
    return ",".join(f"{p}:{o}" for p, o in sorted((wm or {}).items()))


class RetrieverService:
    def __init__(self, bundle: Any, index: SearchBackend, state: Any,
                 cache: VectorCache | None = None, window: int = DEFAULT_WINDOW,
                 context_choice: str | None = None) -> None:
        self.bundle = bundle
        self.index = index
        self.state = state
        self.cache = cache
        self.window = window
        # the learned context choice (None = frequency); same scorer as export.reference
        self.scorer = bundle.context_scorer(context_choice)
        if self.scorer is not None and self.scorer.window > window:
            raise BundleError(f"context predictor reads {self.scorer.window} events, the service "
                              f"window is {window}")
        self.hard_k = int(bundle.config["k"])
        self.w = int(bundle.config["w"])
        self.item_context = q.ItemContexts(bundle.item_ids, bundle.item_contexts)
        self.sizes = _context_sizes(np.asarray(bundle.item_contexts))
        self.allowed = {c for c, n in self.sizes.items() if n > 0}
        self.names = list(bundle.context_names)

    @property
    def model_version(self) -> str:
        return str(self.bundle.version)

    def context_name(self, c: int) -> str:
        return self.names[c] if 0 <= c < len(self.names) else str(c)

    def context_id(self, name: str) -> int:
        """A context name of the bundle, or its decimal id (ASCII digits, in range)."""
        if name in self.names:
            return self.names.index(name)
        # str.isdigit() also accepts e.g. "²", which int() refuses: check ASCII explicitly
        if name.isascii() and name.isdigit() and len(name) <= 6 and int(name) < len(self.names):
            return int(name)
        raise InputError(f"unknown context {name[:100]!r}; known: {', '.join(self.names[:20])}")

    def watermark(self) -> str:
        try:
            return format_watermark(self.state.watermark())
        except Exception:  # noqa: BLE001 - the watermark is informative only
            return ""

    def retrieve(self, user_id: int, k: int, max_contexts: int = 8, exclude_seen: bool = True,
                 timeout: float | None = None) -> RetrieveResult:
        q.validate_request(user_id, k, max_contexts)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        reading = getattr(self.state, "reading", None)
        with (reading() if reading else contextlib.nullcontext()):  # one consistent snapshot
            wm = self.watermark()  # read before the state: the answer reflects at least this much
            seq = self.state.recent(user_id, self.window)
            selected = []
            if seq is not None and len(seq) > 0:
                selected = q.select_contexts(seq.contexts, k, max_contexts, self.allowed, self.window,
                                            self.scorer)
            if not selected:
                cands = q.fallback_candidates(self.bundle.popular, self.sizes, k, max_contexts)
                timings["total"] = (time.perf_counter() - t0) * 1000
                metrics.FALLBACKS.inc()
                metrics.observe_timings(timings)
                return RetrieveResult(user_id, cands, self.model_version, wm, True, timings)
            tails = {c: self.state.context_tail(user_id, c, self.hard_k)[0] for c, _, _ in selected}
            seen = self._seen_items(user_id, seq) if exclude_seen else np.zeros(0, np.int64)
        plan = q.build_plan(k, selected, seq.items, tails, seen, self.item_context, self.w,
                            exclude_seen, self.sizes)
        timings["state"] = (time.perf_counter() - t0) * 1000

        t1 = time.perf_counter()
        vectors = self._vectors(user_id, plan, seq)
        timings["encode"] = (time.perf_counter() - t1) * 1000

        t2 = time.perf_counter()
        remaining = None if timeout is None else max(0.05, timeout - (time.perf_counter() - t0))
        per_context = self.index.search_contexts(vectors, plan.topk, timeout=remaining)
        timings["milvus"] = (time.perf_counter() - t2) * 1000
        t3 = time.perf_counter()
        cands = q.merge_results(plan, per_context)
        timings["merge"] = (time.perf_counter() - t3) * 1000
        timings["total"] = (time.perf_counter() - t0) * 1000
        metrics.observe_timings(timings)
        return RetrieveResult(user_id, cands, self.model_version, wm, False, timings)

    def _seen_items(self, user_id: int, seq: Any) -> np.ndarray:
        """Distinct items of the user's whole stored history (all contexts), as the reference."""
        counts = self.state.context_counts(user_id) if hasattr(self.state, "context_counts") else None
        if counts is None:
            full = self.state.sequence(user_id) if hasattr(self.state, "sequence") else seq
            return np.unique(full.items) if full is not None else np.zeros(0, np.int64)
        parts = [self.state.context_items(user_id, c) for c in counts]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def _vectors(self, user_id: int, plan: q.QueryPlan, seq: Any) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        stamp = window_stamp(seq.items, seq.ts) if self.cache is not None else b""
        missing = []
        for cq in plan.contexts:
            v = self.cache.get(user_id, cq.context, stamp) if self.cache is not None else None
            if v is None:
                missing.append(cq)
            else:
                out[cq.context] = v
        if missing:
            vecs = np.asarray(self.bundle.encode([m.ctx_items for m in missing],
                                                 [plan.recent_items] * len(missing),
                                                 [m.context for m in missing]), np.float32)
            for m, v in zip(missing, vecs):
                out[m.context] = v
                if self.cache is not None:
                    self.cache.put(user_id, m.context, stamp, v.copy())
        return out

    def user_sequence(self, user_id: int, context: int | None = None) -> SequenceResult:
        if user_id < 0:
            raise InputError(f"user_id must be >= 0, got {user_id}")
        wm = self.watermark()
        seq = self.state.sequence(user_id, context) if hasattr(self.state, "sequence") else None
        if seq is None and not hasattr(self.state, "sequence"):
            seq = self.state.recent(user_id)
            if seq is not None and context is not None:
                m = seq.contexts == context
                seq = type(seq)(seq.items[m], seq.ts[m], seq.contexts[m])
        if seq is None:
            e = np.zeros(0, np.int64)
            return SequenceResult(user_id, e, e, np.zeros(0, np.int32), wm)
        return SequenceResult(user_id, seq.items, seq.ts, seq.contexts, wm)
