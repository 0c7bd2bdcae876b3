"""The one multi-context retrieval planner. Offline evaluation, the offline reference
(:func:`retrieve_offline`) and the online service (:mod:`longretriever.retriever.service`)
build their answers with these functions, so training, evaluation and serving compute the
same thing by construction. The I/O side comes in through small Protocols: a user's
:class:`History` (in memory here, the RocksDB state online), an :class:`Encoder` (the bundle's
ONNX session, or the torch model in evaluation) and a :class:`Searcher` (exact numpy here,
Milvus online).

For one user history (canonical ``(ts, item_id)`` order, one context per event):

1. **Context choice** -- :func:`~longretriever.core.multicontext.choice_weights` over the
   contexts of the newest ``window`` events (recency-weighted frequency, or the bundle's
   learned next-context predictor), then ``choose_contexts(weights, max_contexts, allowed)``
   where ``allowed`` = contexts that have items in the bundle.
2. **Slots** -- :func:`~longretriever.core.multicontext.allocate`: answer slot after slot, the
   context with the largest ``weight / (slots + 1)`` (D'Hondt), so the answer for ``k`` is the
   first ``k`` of the answer for any larger ``k``.
3. **Encoder rows** -- per chosen context ``c``: the newest ``K`` events of ``c`` in the whole
   history (the hard search, :meth:`History.context_tail`) and the newest ``W`` events of any
   context (the recent window); one batched encoder call, rows in ``chosen`` order.
4. **Per-context streams** -- for each context, its best items in the total order
   ``(-score, raw item id)`` (:func:`~longretriever.core.ranking.top_n`), seen items removed (:meth:`History.seen_mask`),
   at least as many as its slots: :func:`fetch_streams` asks the searcher for ``2 x`` the
   slots; a stream exclusion leaves short is ranked over its unseen items by an
   :class:`UnseenSearcher` (online) or asked for again, deeper (the offline reference) -- the
   same stream either way, at a cost that follows ``k`` and the unseen share, not the history
   length.
5. **Emit** -- each slot takes its context's next item
   (:func:`~longretriever.core.multicontext.emit`); a context that runs out of items gives
   its remaining slots to the others (the allocation is redone with that cap).

No history (or no allowed context) -> no plan; online the caller answers with
:func:`fallback_candidates` (popular items of the largest contexts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from longretriever.core.errors import InputError
from longretriever.core.multicontext import (DEFAULT_WINDOW, Candidate, ContextScorer, allocate, choice_weights,
                                             choose_contexts, emit, slot_counts)
from longretriever.core.ranking import ExactSearch, deeper, first_depth
from longretriever.core.sequence import UserSequence, canonical_order, context_positions, hard_search_positions

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


# ---- the I/O side, as Protocols ----------------------------------------------------------------
class History(Protocol):
    """One user's behaviour sequence, as the planner reads it."""

    def recent(self, n: int) -> UserSequence | None:
        """The newest ``n`` events of any context, oldest first (None: unknown user)."""

    def context_tail(self, context: int, k: int) -> np.ndarray:
        """Raw ids of the newest ``k`` events of ``context``, oldest first (the hard search)."""

    def seen_mask(self, items: np.ndarray) -> np.ndarray:
        """For each raw id: is it in the user's history? (what exclusion removes)"""


class Encoder(Protocol):
    def encode(self, ctx_items: list[np.ndarray], recent_items: list[np.ndarray],
               contexts: list[int] | np.ndarray) -> np.ndarray:
        """Raw-id rows (oldest first) -> float32 [B, d] user vectors."""


class Searcher(Protocol):
    def search_contexts(self, vectors: Mapping[int, np.ndarray], topk: Mapping[int, int],
                        timeout: float | None = None) -> dict[int, list[Candidate]]:
        """Per context: its best ``topk[c]`` items for ``vectors[c]``, best first."""


class UnseenSearcher(Protocol):
    """A search that applies exclusion before ranking (exact, over one context's items in
    memory): what a context whose best items the user has mostly seen is answered from."""

    def search_unseen(self, context: int, vector: np.ndarray, n: int,
                      seen_mask: Callable[[np.ndarray], np.ndarray], depth: int = 0) -> list[Candidate]:
        """The best ``n`` items of ``context`` that ``seen_mask`` does not mark, best first
        (all of them when fewer are left); ``depth``: how deep the unseen ones are expected."""


class BundleLike(Protocol):
    """What the planner reads of a model bundle (:class:`longretriever.core.bundle.Bundle`)."""

    item_ids: np.ndarray
    item_contexts: np.ndarray
    item_embeddings: np.ndarray

    @property
    def k(self) -> int: ...

    @property
    def w(self) -> int: ...

    def context_scorer(self, choice: str | None = None) -> ContextScorer | None: ...


class SequenceHistory:
    """An in-memory :class:`History` (offline evaluation, the reference, tests). The events are
    put in canonical order first, so any arrival order gives the same history."""

    def __init__(self, items: np.ndarray, ts: np.ndarray, contexts: np.ndarray) -> None:
        items = np.asarray(items, np.int64)
        ts = np.asarray(ts, np.int64)
        contexts = np.asarray(contexts, np.int64)
        if not (items.size == ts.size == contexts.size):
            raise ValueError("items, ts and contexts must have the same length")
        order = canonical_order(ts, items)  # identity for a history already in canonical order
        self.seq = UserSequence(items[order], ts[order], contexts[order].astype(np.int32))
        self._positions: dict[int, np.ndarray] | None = None
        self._seen: np.ndarray | None = None

    def recent(self, n: int) -> UserSequence | None:
        s = self.seq
        lo = max(0, len(s) - max(0, n))
        return UserSequence(s.items[lo:], s.ts[lo:], s.contexts[lo:])

    def context_tail(self, context: int, k: int) -> np.ndarray:
        if self._positions is None:
            self._positions = context_positions(self.seq.contexts)
        return self.seq.items[hard_search_positions(self._positions.get(int(context), _EMPTY), k)]

    def seen_mask(self, items: np.ndarray) -> np.ndarray:
        if self._seen is None:
            self._seen = np.unique(self.seq.items)
        return np.isin(np.asarray(items, np.int64), self._seen, assume_unique=False)


# ---- what the planner knows of a bundle -----------------------------------------------------------
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


def context_sizes(contexts: Sequence[int] | np.ndarray) -> dict[int, int]:
    """Number of items per context id."""
    cs = np.asarray(contexts, np.int64)
    if cs.size == 0:
        return {}
    counts = np.bincount(cs)
    return {int(c): int(counts[c]) for c in np.flatnonzero(counts)}


@dataclass(frozen=True)
class Catalog:
    """The bundle facts a plan depends on: hard-search length ``hard_k``, recent window ``w``,
    item -> context, items per context, and the context choice (``scorer`` None = frequency)."""

    hard_k: int
    w: int
    item_context: Callable[[np.ndarray], np.ndarray]
    sizes: Mapping[int, int]
    scorer: ContextScorer | None = None
    window: int = DEFAULT_WINDOW
    min_slots: int = 0  # adaptive contexts (:func:`worth_a_search`); 0 = off

    @property
    def allowed(self) -> set[int]:
        return {c for c, n in self.sizes.items() if n > 0}

    @classmethod
    def of(cls, bundle: BundleLike, choice: str | None = None, window: int = DEFAULT_WINDOW,
           min_slots: int = 0) -> "Catalog":
        """``choice``: "frequency" | "learned" | None (the bundle's own)."""
        return cls(int(bundle.k), int(bundle.w), ItemContexts(bundle.item_ids, bundle.item_contexts),
                   context_sizes(bundle.item_contexts), bundle.context_scorer(choice), window, min_slots)


# ---- plans ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContextQuery:
    context: int
    weight: float
    slots: int  # answer slots this context fills for k (before any other context runs out)
    ctx_items: np.ndarray  # hard search: newest K items of this context, oldest first


@dataclass(frozen=True)
class QueryPlan:
    """Everything one answer of ``k`` candidates needs, once the history has been read."""

    k: int
    recent_items: np.ndarray  # newest W items overall, oldest first (shared by every row)
    contexts: tuple[ContextQuery, ...]
    exclude_seen: bool = True

    @property
    def chosen(self) -> list[tuple[int, float]]:
        return [(q.context, q.weight) for q in self.contexts]

    @property
    def slots(self) -> dict[int, int]:
        return {q.context: q.slots for q in self.contexts}

    def encoder_rows(self, only: Iterable[int] | None = None) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
        """Arguments of one batched ``Encoder.encode`` call for every chosen context (or the
        contexts in ``only``), in plan order."""
        keep = None if only is None else set(only)
        rows = [q for q in self.contexts if keep is None or q.context in keep]
        return [q.ctx_items for q in rows], [self.recent_items for _ in rows], [q.context for q in rows]


@dataclass(frozen=True)
class UserPlan:
    """The part of a plan that does not depend on ``k``: the chosen contexts and the encoder
    rows. :meth:`query` turns it into the :class:`QueryPlan` for one ``k``."""

    chosen: tuple[tuple[int, float], ...]  # (context, weight), heaviest first
    ctx_rows: tuple[np.ndarray, ...]  # raw ids per chosen context, oldest first
    recent: np.ndarray  # raw ids of the recent window, oldest first

    @property
    def contexts(self) -> list[int]:
        return [c for c, _ in self.chosen]

    def query(self, k: int, exclude_seen: bool = True, min_slots: int = 0) -> QueryPlan:
        chosen = worth_a_search(self.chosen, k, min_slots)
        slots = slot_counts(allocate(chosen, k))
        keep = {c for c, _ in chosen}
        rows = tuple(ContextQuery(int(c), float(w), int(slots.get(c, 0)), tail)
                     for (c, w), tail in zip(self.chosen, self.ctx_rows) if c in keep)
        return QueryPlan(int(k), self.recent, rows, exclude_seen)


def worth_a_search(chosen: Sequence[tuple[int, float]], k: int, min_slots: int
                   ) -> tuple[tuple[int, float], ...]:
    """Adaptive contexts: drop, lightest first, a context that would fill fewer than
    ``min_slots`` of the ``k`` answer slots -- a search round trip costs the same for 3 hits as
    for 200 -- and give its slots to the others (the allocation is redone after each drop). The
    heaviest context always stays; ``min_slots`` <= 0 keeps every context. The kept set depends
    on ``k``, so with this on an answer for a smaller ``k`` need not be a prefix of a larger
    one; online and offline both plan through here, so they still agree."""
    kept = tuple(chosen)
    if min_slots <= 0:
        return kept
    while len(kept) > 1:
        slots = slot_counts(allocate(kept, k))
        small = [i for i, (c, _) in enumerate(kept) if slots.get(c, 0) < min_slots]
        if not small:
            break
        lightest = min(small, key=lambda i: (kept[i][1], -i))  # lightest; later on equal weight
        kept = kept[:lightest] + kept[lightest + 1:]
    return kept


def context_rows(history: History, contexts: Sequence[int], hard_k: int, w: int
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    """Encoder rows of ``contexts`` for a history: the hard search of each context and the
    shared recent window (the newest ``w`` events of any context)."""
    rows = [np.asarray(history.context_tail(int(c), hard_k), np.int64) for c in contexts]
    seq = history.recent(w) if w > 0 else None
    recent = np.asarray(seq.items, np.int64)[-w:] if seq is not None and w > 0 else _EMPTY
    return rows, recent


def plan_user(history: History, max_contexts: int, catalog: Catalog) -> UserPlan | None:
    """Steps 1 and 3 for one user; None when there is nothing to plan from (no history, or no
    context with items)."""
    seq = history.recent(catalog.window)
    if seq is None or len(seq) == 0:
        return None
    weights = choice_weights(seq.contexts, catalog.scorer, catalog.window)
    chosen = tuple(choose_contexts(weights, max_contexts, catalog.allowed))
    if not chosen:
        return None
    rows, recent = context_rows(history, [c for c, _ in chosen], catalog.hard_k, catalog.w)
    return UserPlan(chosen, tuple(rows), recent)


def plan_query(history: History, k: int, max_contexts: int, catalog: Catalog,
               exclude_seen: bool = True) -> QueryPlan | None:
    """The :class:`QueryPlan` of ``k`` candidates for one user (None: fall back)."""
    plan = plan_user(history, max_contexts, catalog)
    return None if plan is None else plan.query(k, exclude_seen, catalog.min_slots)


# ---- encoding and merging ------------------------------------------------------------------------
def encode_plan(plan: QueryPlan, encoder: Encoder, only: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """One batched encoder call for the plan's contexts (or those in ``only``)."""
    ctx_items, recent, contexts = plan.encoder_rows(only)
    if not contexts:
        return {}
    vecs = np.asarray(encoder.encode(ctx_items, recent, contexts), np.float32)
    return {c: v for c, v in zip(contexts, vecs)}


def fetch_streams(searcher: Searcher, history: History, vectors: Mapping[int, np.ndarray],
                  need: Mapping[int, int], sizes: Mapping[int, int], exclude_seen: bool = True,
                  timeout: float | None = None, deep: UnseenSearcher | None = None
                  ) -> tuple[dict[int, list[Candidate]], dict[int, bool]]:
    """Per context with ``need[c] > 0``: its best ranked candidates, seen items removed when
    ``exclude_seen``, at least ``need[c]`` of them -- or all there are (then ``complete[c]``).
    A context that exclusion left short is answered by ``deep`` when given: its unseen items
    ranked exactly, in one pass over the context (a user who has seen most of a context's best
    items needs a deep list, and fetching one to filter it is what made such queries slow);
    without ``deep`` it is asked again, deeper (:func:`deeper`). Same stream either way."""
    depth = {c: min(int(sizes.get(c, 0)), first_depth(n, exclude_seen)) for c, n in need.items() if n > 0}
    streams: dict[int, list[Candidate]] = {}
    complete: dict[int, bool] = {}
    pending = {c: d for c, d in depth.items() if d > 0}
    for c in need:
        if c not in pending:
            streams[c], complete[c] = [], True
    while pending:
        hits = searcher.search_contexts({c: vectors[c] for c in pending}, pending, timeout=timeout)
        again: dict[int, int] = {}
        got_of = {c: list(hits.get(c, [])) for c in pending}
        if exclude_seen:  # one seen-item lookup for every context of the round
            ids = np.fromiter((h.item_id for got in got_of.values() for h in got), np.int64)
            seen = iter(history.seen_mask(ids).tolist() if ids.size else [])
            got_of = {c: [h for h in got if not next(seen)] for c, got in got_of.items()}
        for c, asked in pending.items():
            got, returned = got_of[c], len(hits.get(c, []))
            done = asked >= int(sizes.get(c, 0)) or returned < asked  # nothing more to ask for
            if len(got) >= need[c] or done:
                streams[c], complete[c] = got, done
                continue
            est = deeper(asked, returned, len(got), need[c])
            if deep is None:
                again[c] = min(int(sizes[c]), est)
            else:
                streams[c] = deep.search_unseen(c, vectors[c], need[c], history.seen_mask, est)
                complete[c] = len(streams[c]) < need[c]
        pending = again
    return streams, complete


def answer(plan: QueryPlan, vectors: Mapping[int, np.ndarray], searcher: Searcher, history: History,
           sizes: Mapping[int, int], timeout: float | None = None, deep: UnseenSearcher | None = None
           ) -> list[Candidate]:
    """Steps 4 and 5: fetch each context's stream, fill the slots; when a context runs out
    of items its remaining slots are allocated again among the others (deeper streams are
    fetched for them if needed; ``deep``: see :func:`fetch_streams`)."""
    chosen = plan.chosen
    streams, complete = fetch_streams(searcher, history, vectors, plan.slots, sizes, plan.exclude_seen,
                                      timeout, deep)
    while True:
        caps = {c: len(streams[c]) for c in streams if complete.get(c)}
        slots = allocate(chosen, plan.k, caps)
        short = {c: n for c, n in slot_counts(slots).items() if n > len(streams.get(c, ())) and not complete.get(c)}
        if not short:
            return emit(slots, streams)
        more, done = fetch_streams(searcher, history, vectors, short, sizes, plan.exclude_seen, timeout, deep)
        streams.update(more)
        complete.update(done)


def retrieve(history: History, k: int, max_contexts: int, catalog: Catalog, encoder: Encoder,
             searcher: Searcher, exclude_seen: bool = True,
             timeout: float | None = None) -> list[Candidate] | None:
    """Steps 1-5 for one user; None when there is no plan (the caller falls back)."""
    plan = plan_query(history, k, max_contexts, catalog, exclude_seen)
    if plan is None:
        return None
    return answer(plan, encode_plan(plan, encoder), searcher, history, catalog.sizes, timeout)


def retrieve_offline(bundle: BundleLike, items: np.ndarray, ts: np.ndarray, contexts: np.ndarray,
                     k: int, max_contexts: int = 8, exclude_seen: bool = True,
                     context_choice: str | None = None, min_slots: int = 0) -> list[Candidate]:
    """The offline reference for one user history (any order): the bundle's encoder and an
    exact search; ``[]`` when there is nothing to plan from. The online service must return
    exactly this for the same history and bundle. ``context_choice``: "frequency" |
    "learned" | None (the bundle's own choice)."""
    history = SequenceHistory(items, ts, contexts)
    if len(history.seq) == 0 or k <= 0:
        return []
    got = retrieve(history, k, max_contexts, Catalog.of(bundle, context_choice, min_slots=min_slots),
                   bundle, ExactSearch.of(bundle), exclude_seen)  # type: ignore[arg-type]
    return got or []


# ---- cold start -------------------------------------------------------------------------------------
def fallback_contexts(sizes: Mapping[int, int], max_contexts: int) -> list[tuple[int, float]]:
    """Cold user: the ``max_contexts`` largest contexts, weighted by their item counts."""
    return choose_contexts({c: float(n) for c, n in sizes.items() if n > 0}, max_contexts)


def fallback_candidates(popular: Callable[[int, int], Iterable[int]], sizes: Mapping[int, int],
                        k: int, max_contexts: int) -> list[Candidate]:
    """Popular items (``Bundle.popular(context, n)``, most popular first) of the largest
    contexts, slots allocated as for any user; scored by popularity rank (1.0 for the top item
    of a context, decreasing)."""
    chosen = fallback_contexts(sizes, max_contexts)
    slots = allocate(chosen, k, {c: int(sizes[c]) for c, _ in chosen})
    streams: dict[int, list[Candidate]] = {}
    for c, n in slot_counts(slots).items():
        ids = [int(i) for i in popular(c, n)][:n]
        streams[c] = [Candidate(i, 1.0 - r / max(n, 1), int(c)) for r, i in enumerate(ids)]
    return emit(slots, streams)
