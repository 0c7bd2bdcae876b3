"""Multi-context retrieval logic, pure: which contexts to query for a user, which context
fills each answer slot, and how the per-context ranked streams merge into one answer.

Offline evaluation and online serving call exactly these functions, so the same history
gives the same answer in both.
"""

from __future__ import annotations

from collections import Counter
from itertools import repeat
from typing import Mapping, NamedTuple, Protocol, Sequence

import numpy as np

DEFAULT_TAU = 200.0  # decay length, in events, of the recency weighting
DEFAULT_WINDOW = 1000  # only the newest events matter for context choice (exp(-1000/200) ~ 0.007)


class Candidate(NamedTuple):
    """One answer slot: immutable and hashable. A named tuple rather than a frozen dataclass:
    a query builds a few hundred of them per context round, and a frozen dataclass's
    ``__init__`` (one ``object.__setattr__`` per field) cost ~0.5 us each, 3x a tuple's."""

    item_id: int
    score: float
    context: int


def candidates(ids: np.ndarray, scores: np.ndarray, context: int) -> list[Candidate]:
    """Candidates of one context from parallel id / score arrays, in their order: one
    ``tolist()`` per array, not a conversion per element (deep lists are thousands long)."""
    return list(map(Candidate._make, zip(np.asarray(ids, np.int64).tolist(),
                                         np.asarray(scores, np.float64).tolist(), repeat(int(context)))))


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


def allocate(chosen: Sequence[tuple[int, float]], k: int,
             caps: Mapping[int, int | None] | None = None) -> list[int]:
    """The context of each of the first ``k`` answer slots, in answer order: slot after slot,
    the context with the largest ``weight / (slots it already has + 1)`` (D'Hondt; ties by the
    order of ``chosen``), skipping a context once it has ``caps[c]`` slots (None = no cap).

    House-monotone by construction: the slots for ``k`` are the first ``k`` of the slots for
    any larger ``k``, so an answer is a prefix of every longer answer (users page through
    results). Over many slots the counts approach ``k`` times the weight shares."""
    caps = caps or {}
    if k <= 0:
        return []
    # every quotient w / (n + 1) a context can reach within k slots (and its cap), ranked by
    # (-quotient, position in ``chosen``): the slot-after-slot order, in one sort
    # Without caps a context's slots are floor(w / d) for a divisor d > W / (k + contexts)
    # (W: total weight), so fewer than w (k + contexts) / W: only those quotients can rank
    # within the first k (+2 absorbs rounding); with caps, every quotient up to the cap
    total = sum(float(w) for _, w in chosen if w > 0)
    bound = (k + len(chosen)) / total if total > 0 and not caps else None
    ws, ms, pos, ctx = [], [], [], []
    for i, (c, w) in enumerate(chosen):
        cap = caps.get(c)
        m = k if cap is None else min(k, int(cap))
        if bound is not None and w > 0:
            m = min(m, int(float(w) * bound) + 2)
        if w > 0 and m > 0:
            ws.append(float(w))
            ms.append(m)
            pos.append(i)
            ctx.append(int(c))
    if not ws:
        return []
    counts = np.asarray(ms, np.int64)
    row = np.repeat(np.arange(counts.size), counts)  # the context of each quotient
    divisor = np.arange(row.size, dtype=np.int64) - (np.cumsum(counts) - counts)[row] + 1  # 1..m
    q = np.asarray(ws, np.float64)[row] / divisor
    order = np.lexsort((np.asarray(pos, np.int64)[row], -q))[:k]
    return np.asarray(ctx, np.int64)[row[order]].tolist()


def slot_counts(slots: Sequence[int]) -> dict[int, int]:
    """How many slots each context has (in order of first slot)."""
    return dict(Counter(slots))


def emit(slots: Sequence[int], streams: Mapping[int, Sequence[Candidate]]) -> list[Candidate]:
    """Fill the slots in order, each from its context's ranked stream (best first). An item id
    appears once (contexts are mutually exclusive, so this only guards malformed input)."""
    pos: dict[int, int] = {}
    used: set[int] = set()
    out: list[Candidate] = []
    for c in slots:
        stream = streams.get(c, ())
        i = pos.get(c, 0)
        while i < len(stream) and stream[i].item_id in used:
            i += 1
        if i < len(stream):
            out.append(stream[i])
            used.add(stream[i].item_id)
            i += 1
        pos[c] = i
    return out
