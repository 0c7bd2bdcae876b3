"""Multi-context retrieval logic, pure: which contexts to query for a user, how many
candidates each may contribute, and how the per-context results merge into one list.

Offline evaluation and online serving call exactly these functions, so the same history
gives the same answer in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

DEFAULT_TAU = 200.0  # decay length, in events, of the recency weighting
DEFAULT_WINDOW = 1000  # only the newest events matter for context choice (exp(-1000/200) ~ 0.007)


@dataclass(frozen=True, slots=True)
class Candidate:
    item_id: int
    score: float
    context: int


def context_weights(recent_contexts: np.ndarray, tau: float = DEFAULT_TAU) -> dict[int, float]:
    """Recency-weighted frequency of each context over a sequence given oldest first:
    the newest event weighs 1, the one before exp(-1/tau), and so on."""
    ctx = np.asarray(recent_contexts, dtype=np.int64)
    if ctx.size == 0:
        return {}
    age = np.arange(ctx.size - 1, -1, -1, dtype=np.float64)
    w = np.exp(-age / tau)
    sums = np.bincount(ctx, weights=w)
    nz = np.flatnonzero(sums)
    return {int(c): float(sums[c]) for c in nz}


class ContextScorer(Protocol):
    """A learned context choice (e.g. :class:`longretriever.core.context_predictor.ContextPredictor`)."""

    window: int  # how many of the newest events it reads

    def weights(self, recent_contexts: np.ndarray) -> dict[int, float]: ...


CONTEXT_CHOICES = ("frequency", "learned")  # what a bundle records and serving applies
#: the values every ``--context-choice`` option and the ``context_choice`` setting accept;
#: "auto" = decided on validation (``train``: pick now; ``serve``: the bundle's recorded pick)
CHOICE_OPTIONS = ("auto", *CONTEXT_CHOICES)


def choice_weights(recent_contexts: np.ndarray, scorer: ContextScorer | None = None,
                   window: int = DEFAULT_WINDOW) -> dict[int, float]:
    """Context weights from the newest ``window`` contexts of a history (oldest first): the
    recency-weighted frequency when ``scorer`` is None, else the scorer's weights. The one
    entry point for both context choices, offline and online."""
    rc = np.asarray(recent_contexts, dtype=np.int64)
    rc = rc[-window:] if window > 0 else rc[:0]
    return scorer.weights(rc) if scorer is not None else context_weights(rc)


def choose_contexts(weights: Mapping[int, float], max_contexts: int,
                    allowed: set[int] | None = None) -> list[tuple[int, float]]:
    """The ``max_contexts`` heaviest contexts, heaviest first; ties by smaller context id.
    ``allowed`` drops contexts with nothing to retrieve (e.g. no items in the index)."""
    items = [(c, w) for c, w in weights.items() if w > 0 and (allowed is None or c in allowed)]
    items.sort(key=lambda cw: (-cw[1], cw[0]))
    return items[:max(0, max_contexts)]


def allocate_quotas(chosen: Sequence[tuple[int, float]], k: int) -> dict[int, int]:
    """Split ``k`` slots across contexts in proportion to their weights (largest remainder;
    ties by order in ``chosen``). Sums to ``k`` when any context is chosen."""
    if not chosen or k <= 0:
        return {}
    w = np.array([cw[1] for cw in chosen], dtype=np.float64)
    share = w / w.sum() * k
    base = np.floor(share).astype(np.int64)
    rest = k - int(base.sum())
    order = sorted(range(len(chosen)), key=lambda i: (-(share[i] - base[i]), i))
    for i in order[:rest]:
        base[i] += 1
    return {chosen[i][0]: int(base[i]) for i in range(len(chosen))}


def merge(per_context: Mapping[int, Sequence[Candidate]], quotas: Mapping[int, int], k: int,
          exclude: set[int] | frozenset[int] = frozenset()) -> list[Candidate]:
    """Merge per-context ranked lists under quotas, best score first.

    Each context first contributes up to its quota of its best non-excluded candidates; slots
    a context cannot fill go to the best remaining candidates of any context. An item id
    appears once. Ties break by item id so the result is deterministic."""
    taken: list[Candidate] = []
    spare: list[Candidate] = []
    seen: set[int] = set(exclude)
    for ctx in sorted(per_context):
        ranked = sorted(per_context[ctx], key=lambda c: (-c.score, c.item_id))
        q = quotas.get(ctx, 0)
        n = 0
        for cand in ranked:
            if cand.item_id in seen:
                continue
            if n < q:
                taken.append(cand)
                seen.add(cand.item_id)
                n += 1
            else:
                spare.append(cand)
    if len(taken) < k:
        spare.sort(key=lambda c: (-c.score, c.item_id))
        for cand in spare:
            if len(taken) >= k:
                break
            if cand.item_id not in seen:
                taken.append(cand)
                seen.add(cand.item_id)
    taken.sort(key=lambda c: (-c.score, c.item_id))
    return taken[:k]
