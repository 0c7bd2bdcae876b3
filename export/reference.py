"""The offline multi-context reference retrieval. The online server must return exactly
what :func:`retrieve_offline` returns for the same history and bundle.

For one user history (raw ids, canonical ``(ts, item_id)`` order, with a context per event):

1. **Context choice** -- ``choice_weights`` over the contexts of the newest
   ``DEFAULT_WINDOW`` events (recency-weighted frequency, or the bundle's learned next-context
   predictor when its ``context_choice`` is ``learned``), then ``choose_contexts(weights, max_contexts, allowed)`` where
   ``allowed`` = contexts that have items in the bundle.
2. **Quotas** -- ``allocate_quotas(chosen, k)``.
3. **Encoder inputs** -- per chosen context ``c``: the newest ``K`` events of ``c`` in the
   whole history (``hard_search_positions``), plus the newest ``W`` events of any context
   (``recent_window``); one batched ``bundle.encode`` call, rows in ``chosen`` order.
4. **Per-context exact top-n** -- scores ``item_embeddings[items of c] @ u_c`` (float32);
   ``n = quota_c + s_c`` where ``s_c`` = number of distinct seen items whose bundle context
   is ``c`` (0 when ``exclude_seen`` is False). Ranking is the total order
   ``(-score, raw item id)``.
5. **Merge** -- ``merge(per_context, quotas, k, exclude=seen raw ids)``.

Empty history (or no allowed context) -> ``[]``; callers may fall back to
``bundle.popular``. ``Candidate.item_id`` is the raw item id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from longretriever.core.multicontext import (Candidate, ContextScorer, allocate_quotas, choice_weights,
                                        choose_contexts, merge)
from longretriever.core.sequence import canonical_order, context_positions, hard_search_positions, recent_window


@dataclass(frozen=True)
class UserPlan:
    chosen: list[tuple[int, float]]  # (context, weight), heaviest first
    ctx_rows: list[np.ndarray]  # raw ids per chosen context, oldest first
    recent: np.ndarray  # raw ids of the recent window, oldest first
    seen: frozenset[int]  # distinct raw ids in the history
    seen_per_context: dict[int, int]  # chosen context -> seen items indexed in that context

    @property
    def contexts(self) -> list[int]:
        return [c for c, _ in self.chosen]


def plan_user(items: np.ndarray, contexts: np.ndarray, k: int, w: int, allowed: set[int],
              max_contexts: int, vocab_dense, item_contexts: np.ndarray,
              scorer: ContextScorer | None = None) -> UserPlan:
    """Steps 1 and 3 (inputs only) for a history already in canonical order.
    ``vocab_dense``: raw ids -> dense indices (-1 unknown); ``item_contexts``: per dense index;
    ``scorer``: the learned context choice (None = recency-weighted frequency)."""
    items = np.asarray(items, dtype=np.int64)
    contexts = np.asarray(contexts, dtype=np.int64)
    weights = choice_weights(contexts, scorer)
    chosen = choose_contexts(weights, max_contexts, allowed)
    by_ctx = context_positions(contexts) if chosen else {}
    empty = np.zeros(0, np.int64)
    rows = [items[hard_search_positions(by_ctx.get(c, empty), k)] for c, _ in chosen]
    recent = items[recent_window(items.size, w)]
    seen_raw = np.unique(items)
    dense = vocab_dense(seen_raw)
    dense = dense[dense >= 0]
    seen_ctx = np.asarray(item_contexts)[dense]
    spc = {c: int(np.count_nonzero(seen_ctx == c)) for c, _ in chosen}
    return UserPlan(chosen, rows, recent, frozenset(seen_raw.tolist()), spc)


def top_n(scores: np.ndarray, raw_ids: np.ndarray, n: int) -> np.ndarray:
    """Positions of the best ``n`` under the total order (-score, raw id), best first."""
    m = scores.size
    if n <= 0 or m == 0:
        return np.zeros(0, np.int64)
    if n < m:
        part = np.argpartition(-scores, n - 1)[:n]
        sel = np.flatnonzero(scores >= scores[part].min())  # keep boundary ties: exact order
    else:
        sel = np.arange(m)
    order = np.lexsort((raw_ids[sel], -scores[sel]))[:n]
    return sel[order]


def rank_context(vec: np.ndarray, ctx: int, n: int, item_ids: np.ndarray,
                 item_embeddings: np.ndarray, context_items: Mapping[int, np.ndarray]) -> list[Candidate]:
    """Exact top-``n`` of context ``ctx``'s items for user vector ``vec`` (step 4)."""
    idx = context_items.get(ctx)
    if idx is None or idx.size == 0 or n <= 0:
        return []
    scores = item_embeddings[idx] @ np.asarray(vec, dtype=np.float32)
    raw = item_ids[idx]
    best = top_n(scores, raw, n)
    return [Candidate(int(raw[i]), float(scores[i]), ctx) for i in best]


def list_lengths(plan: UserPlan, k: int, exclude_seen: bool) -> dict[int, int]:
    """``quota_c + s_c`` per chosen context for a final list of ``k``."""
    quotas = allocate_quotas(plan.chosen, k)
    return {c: q + (plan.seen_per_context.get(c, 0) if exclude_seen else 0) for c, q in quotas.items()}


def merge_user(plan: UserPlan, ranked: Mapping[int, list[Candidate]], k: int,
               exclude_seen: bool = True) -> list[Candidate]:
    """Step 5. ``ranked[c]`` may be longer than needed; it is cut to ``quota_c + s_c`` first,
    so one long ranking serves several ``k`` exactly."""
    quotas = allocate_quotas(plan.chosen, k)
    lengths = list_lengths(plan, k, exclude_seen)
    per_ctx = {c: list(ranked.get(c, []))[:lengths[c]] for c in quotas}
    return merge(per_ctx, quotas, k, exclude=plan.seen if exclude_seen else frozenset())


def retrieve_offline(bundle, items: np.ndarray, ts: np.ndarray, contexts: np.ndarray, k: int,
                     max_contexts: int = 8, exclude_seen: bool = True,
                     context_choice: str | None = None) -> list[Candidate]:
    """Reference multi-context retrieval for one user (see module docstring).
    ``context_choice``: "frequency" | "learned" | None (the bundle's own choice)."""
    items = np.asarray(items, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    contexts = np.asarray(contexts, dtype=np.int64)
    if not (items.size == ts.size == contexts.size):
        raise ValueError("items, ts and contexts must have the same length")
    order = canonical_order(ts, items)  # identity for a history already in canonical order
    items, contexts = items[order], contexts[order]
    if items.size == 0 or k <= 0:
        return []
    plan = plan_user(items, contexts, bundle.k, bundle.w, set(bundle.context_items), max_contexts,
                     bundle.vocab.dense, bundle.item_contexts, bundle.context_scorer(context_choice))
    if not plan.chosen:
        return []
    vecs = bundle.encode(plan.ctx_rows, [plan.recent] * len(plan.chosen), plan.contexts)
    lengths = list_lengths(plan, k, exclude_seen)
    ranked = {c: rank_context(vecs[i], c, lengths[c], bundle.item_ids, bundle.item_embeddings,
                              bundle.context_items) for i, c in enumerate(plan.contexts)}
    return merge_user(plan, ranked, k, exclude_seen)
