"""Pure query planning for online multi-context retrieval.

Same semantics as the offline reference (``longretriever.export.reference.retrieve_offline``), built only from
``longretriever.core.multicontext`` and ``longretriever.core.sequence``:

1. ``choice_weights`` over the contexts of the newest ``DEFAULT_WINDOW`` events (frequency, or
   the bundle's learned next-context predictor);
2. ``choose_contexts`` (only contexts that have items in the index), ``allocate_quotas``;
3. per chosen context ``c``: encoder row = (newest ``K`` events of ``c`` -- the hard search --,
   newest ``W`` events overall, ``c``); search top-(quota + #distinct seen items whose bundle
   context is ``c``; + 0 when not excluding seen) within ``c``'s items, so excluding seen items
   never leaves the quota short -- and the list lengths equal the reference's exactly, which
   matters because ``merge`` fills unused quota from the items beyond each quota;
4. ``merge(per_context, quotas, k, exclude=all distinct seen raw ids)``.

Cold / unknown users get a fallback plan: popular items of the largest contexts, flagged
``fallback=True``. Nothing here does I/O; :mod:`longretriever.retriever.service` feeds it from the state
store, the bundle and Milvus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from longretriever.core.errors import InputError
from longretriever.core.multicontext import (DEFAULT_WINDOW, Candidate, ContextScorer, allocate_quotas,
                                        choice_weights, choose_contexts, merge)
from longretriever.core.sequence import canonical_order, context_positions, hard_search_positions

MAX_K = 10_000
MAX_CONTEXTS = 64
_EMPTY = np.zeros(0, np.int64)


def validate_request(user_id: int, k: int, max_contexts: int) -> None:
    """Request limits shared by the gRPC server and the service (InputError -> INVALID_ARGUMENT)."""
    if user_id < 0:
        raise InputError(f"user_id must be >= 0, got {user_id}")
    if not 1 <= k <= MAX_K:
        raise InputError(f"k must be in [1, {MAX_K}], got {k}")
    if not 1 <= max_contexts <= MAX_CONTEXTS:
        raise InputError(f"max_contexts must be in [1, {MAX_CONTEXTS}], got {max_contexts}")


@dataclass(frozen=True)
class ContextQuery:
    context: int
    weight: float
    quota: int
    topk: int  # hits to fetch: quota + #seen items of this context (capped by context size)
    ctx_items: np.ndarray  # hard search: newest K items of this context, oldest first


@dataclass(frozen=True)
class QueryPlan:
    k: int
    recent_items: np.ndarray  # newest W items overall, oldest first (shared by every row)
    contexts: tuple[ContextQuery, ...]
    exclude: frozenset[int] = field(default_factory=frozenset)

    @property
    def quotas(self) -> dict[int, int]:
        return {q.context: q.quota for q in self.contexts}

    @property
    def topk(self) -> dict[int, int]:
        return {q.context: q.topk for q in self.contexts}

    def encoder_rows(self) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
        """Arguments of ``Bundle.encode`` for every chosen context, batched in one call."""
        return ([q.ctx_items for q in self.contexts], [self.recent_items for _ in self.contexts],
                [q.context for q in self.contexts])


def select_contexts(recent_contexts: np.ndarray, k: int, max_contexts: int,
                    allowed: set[int] | None = None,
                    window: int = DEFAULT_WINDOW,
                    scorer: ContextScorer | None = None) -> list[tuple[int, float, int]]:
    """(context, weight, quota) for the chosen contexts, heaviest first (``scorer``: the
    learned context choice; None = recency-weighted frequency)."""
    chosen = choose_contexts(choice_weights(recent_contexts, scorer, window), max_contexts, allowed)
    quotas = allocate_quotas(chosen, k)
    return [(c, w, quotas[c]) for c, w in chosen]


class ItemContexts:
    """Raw item id -> bundle context id (-1 when the item is not in the bundle)."""

    def __init__(self, item_ids: np.ndarray, item_contexts: np.ndarray) -> None:
        ids = np.asarray(item_ids, np.int64)
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        self.ctx = np.asarray(item_contexts, np.int64)[order]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, np.int64)
        if self.ids.size == 0:
            return np.full(raw.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, raw), self.ids.size - 1)
        return np.where(self.ids[pos] == raw, self.ctx[pos], -1)


def build_plan(k: int, selected: Sequence[tuple[int, float, int]], recent_items: np.ndarray,
               tails: Mapping[int, np.ndarray], seen_items: np.ndarray,
               item_context: Callable[[np.ndarray], np.ndarray], w: int,
               exclude_seen: bool = True,
               context_sizes: Mapping[int, int] | None = None) -> QueryPlan:
    """Assemble the plan once the tails (hard search) of the chosen contexts and the user's
    seen items (whole stored history, any order, duplicates allowed) are known.
    ``recent_items`` is the user's recent sequence (oldest first); its newest ``w`` items are
    the shared recent part of every encoder row. ``item_context`` maps raw ids to their
    *bundle* context (-1 unknown): the number of seen items of context ``c`` counts seen items
    whose bundle context is ``c``, exactly as the offline reference does."""
    ri = np.asarray(recent_items, np.int64)
    recent = ri[max(0, ri.size - w):] if w > 0 else ri[:0]
    seen = np.unique(np.asarray(seen_items, np.int64)) if exclude_seen else _EMPTY
    seen_ctx = item_context(seen) if seen.size else _EMPTY
    rows = []
    for c, weight, quota in selected:
        topk = quota + int(np.count_nonzero(seen_ctx == c))
        if context_sizes is not None:
            topk = min(topk, int(context_sizes.get(c, 0)))
        rows.append(ContextQuery(int(c), float(weight), int(quota), int(topk),
                                 np.asarray(tails.get(c, _EMPTY), np.int64)))
    return QueryPlan(int(k), recent, tuple(rows), frozenset(seen.tolist()))


def plan_from_sequence(items: np.ndarray, ts: np.ndarray, contexts: np.ndarray, k: int,
                       hard_k: int, w: int, max_contexts: int = 8, exclude_seen: bool = True,
                       context_sizes: Mapping[int, int] | None = None,
                       item_context: Callable[[np.ndarray], np.ndarray] | None = None,
                       scorer: ContextScorer | None = None) -> QueryPlan | None:
    """Plan from a whole in-memory sequence (any order); None when there is nothing to plan
    from (empty sequence or no context with items) -- the caller then falls back."""
    items = np.asarray(items, np.int64)
    ts = np.asarray(ts, np.int64)
    contexts = np.asarray(contexts, np.int64)
    if items.size == 0:
        return None
    order = canonical_order(ts, items)
    items, contexts = items[order], contexts[order]
    allowed = {c for c, n in context_sizes.items() if n > 0} if context_sizes is not None else None
    selected = select_contexts(contexts, k, max_contexts, allowed, scorer=scorer)
    if not selected:
        return None
    pos = context_positions(contexts)
    tails = {c: items[hard_search_positions(pos[c], hard_k)] for c, _, _ in selected}
    if item_context is None:  # no bundle table: an item's context is its event's context
        first = {}
        for i, c in zip(items.tolist(), contexts.tolist()):
            first.setdefault(i, c)
        table = ItemContexts(np.fromiter(first, np.int64), np.fromiter(first.values(), np.int64))
        item_context = table
    return build_plan(k, selected, items, tails, items, item_context, w, exclude_seen, context_sizes)


def merge_results(plan: QueryPlan, per_context: Mapping[int, Sequence[Candidate]]) -> list[Candidate]:
    """Merge the per-context hits of a plan (multicontext.merge with the plan's quotas)."""
    chosen = {q.context for q in plan.contexts}
    return merge({c: list(v) for c, v in per_context.items() if c in chosen}, plan.quotas, plan.k,
                 exclude=plan.exclude)


def exact_search(query: np.ndarray, item_ids: np.ndarray, item_vectors: np.ndarray, topk: int,
                 context: int) -> list[Candidate]:
    """Exact inner-product top-k (numpy) over one context's items; ties by item id."""
    if topk <= 0 or item_ids.size == 0:
        return []
    s = item_vectors @ np.asarray(query, np.float32)
    n = min(topk, s.size)
    part = np.argpartition(-s, n - 1)[:n]
    top = part[np.lexsort((item_ids[part], -s[part]))]
    return [Candidate(int(item_ids[i]), float(s[i]), int(context)) for i in top]


# ---- cold start -----------------------------------------------------------------------------
def fallback_contexts(context_sizes: Mapping[int, int], k: int, max_contexts: int) -> list[tuple[int, float, int]]:
    """Cold user: the ``max_contexts`` largest contexts (by item count), quotas by size."""
    chosen = choose_contexts({c: float(n) for c, n in context_sizes.items() if n > 0}, max_contexts)
    quotas = allocate_quotas(chosen, k)
    return [(c, w, quotas[c]) for c, w in chosen]


def fallback_candidates(popular: Callable[[int, int], Iterable[int]], context_sizes: Mapping[int, int],
                        k: int, max_contexts: int,
                        selected: Sequence[tuple[int, float, int]] | None = None,
                        exclude: Iterable[int] = ()) -> list[Candidate]:
    """Popular items per context (``Bundle.popular(context, n)``, most popular first), scored
    by popularity rank (1.0 for the top item of a context, decreasing), merged under quotas."""
    selected = list(selected) if selected is not None else fallback_contexts(context_sizes, k, max_contexts)
    excl = set(exclude)
    per_context: dict[int, list[Candidate]] = {}
    for c, _, quota in selected:
        n = quota + len(excl)
        ids = [int(i) for i in popular(c, n)][:n]
        per_context[c] = [Candidate(i, 1.0 - r / max(n, 1), int(c)) for r, i in enumerate(ids)]
    return merge(per_context, {c: q for c, _, q in selected}, k, exclude=excl)
