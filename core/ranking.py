"""The one exact ranking and how deep exclusion has to look, shared by the planner
(:mod:`longretriever.core.planner`), offline evaluation and the online service's in-memory
search:

* :func:`top_n` -- the total order ``(-score, raw item id)`` every exact ranking uses (ties at
  the boundary resolved by id, not by partition order);
* :class:`ExactSearch` -- exact inner-product search over in-memory item vectors, one
  contiguous block per context: the offline reference's searcher, the benchmarks' floor, and
  (``search_unseen``) the online answer for a context whose best items the user has mostly seen;
* :func:`first_depth` / :func:`deeper` -- how many hits to look at first when seen items will
  be removed, and how much deeper to look when that was not enough.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from longretriever.core.multicontext import Candidate, candidates


def first_depth(need: int, exclude_seen: bool) -> int:
    """How many hits to ask a context for first: a margin for the seen items that exclusion
    removes (more are asked for only when the margin is not enough)."""
    return need + max(8, need) if exclude_seen else need


def deeper(asked: int, returned: int, unseen: int, need: int) -> int:
    """How deep to ask a context again when exclusion left ``unseen`` of the ``returned`` hits
    and ``need`` are wanted: at least twice as deep, and deep enough that the unseen share seen
    so far would fill the stream (x1.25), so a user who has seen most of a context's best items
    gets there in one more round instead of a doubling per round (each round re-reads the list
    from the top). Changes how much is fetched, never the answer."""
    short = need - unseen
    est = asked + 4 * asked if unseen == 0 else asked + int(1.25 * short * max(1, returned) / unseen)
    return max(2 * asked, asked + 2 * short, est)


def top_n(scores: np.ndarray, raw_ids: np.ndarray, n: int) -> np.ndarray:
    """Positions of the best ``n`` under the total order (-score, raw id), best first: the one
    tie rule of every exact ranking (boundary ties are resolved by id, not by partition order)."""
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


def exact_search(query: np.ndarray, item_ids: np.ndarray, item_vectors: np.ndarray, topk: int,
                 context: int) -> list[Candidate]:
    """Exact inner-product top-k (float32 numpy) over one context's items."""
    if topk <= 0 or item_ids.size == 0:
        return []
    s = item_vectors @ np.asarray(query, np.float32)
    pos = top_n(s, item_ids, topk)
    return candidates(np.asarray(item_ids)[pos], s[pos], context)


class ExactSearch:
    """A :class:`Searcher` over in-memory item vectors (the offline reference, evaluation, the
    benchmarks' floor): items are sorted by context once, so a context is one contiguous block."""

    def __init__(self, item_ids: np.ndarray, item_contexts: np.ndarray, item_vectors: np.ndarray) -> None:
        ctx = np.asarray(item_contexts, np.int64)
        order = np.argsort(ctx, kind="stable")
        self.item_ids = np.asarray(item_ids, np.int64)[order]
        self.item_vectors = np.ascontiguousarray(np.asarray(item_vectors, np.float32)[order])
        sc = ctx[order]
        self.blocks = {int(c): (int(np.searchsorted(sc, c, "left")), int(np.searchsorted(sc, c, "right")))
                       for c in np.unique(sc)}

    @classmethod
    def of(cls, bundle) -> "ExactSearch":
        """From a bundle (``item_ids``, ``item_contexts``, ``item_embeddings``)."""
        return cls(bundle.item_ids, bundle.item_contexts, bundle.item_embeddings)

    def search(self, context: int, vector: np.ndarray, topk: int) -> list[Candidate]:
        lo, hi = self.blocks.get(int(context), (0, 0))
        return exact_search(vector, self.item_ids[lo:hi], self.item_vectors[lo:hi], topk, context)

    def search_contexts(self, vectors: Mapping[int, np.ndarray], topk: Mapping[int, int],
                        timeout: float | None = None) -> dict[int, list[Candidate]]:
        return {int(c): self.search(c, vectors[c], n) for c, n in topk.items()}

    def search_unseen(self, context: int, vector: np.ndarray, n: int,
                      seen_mask: Callable[[np.ndarray], np.ndarray], depth: int = 0) -> list[Candidate]:
        """:class:`UnseenSearcher`: the context is scored once; its best ``depth`` items (the
        caller's estimate of how deep the unseen ones are) are checked, and deeper prefixes of
        the same ranking while fewer than ``n`` of them are unseen -- seen checks follow the
        depth needed, not the context's size or the history."""
        lo, hi = self.blocks.get(int(context), (0, 0))
        ids = self.item_ids[lo:hi]
        if n <= 0 or ids.size == 0:
            return []
        s = self.item_vectors[lo:hi] @ np.asarray(vector, np.float32)
        depth = min(ids.size, max(depth, first_depth(n, True)))
        while True:
            pos = top_n(s, ids, depth)
            unseen = pos[~np.asarray(seen_mask(ids[pos]), bool)]
            if unseen.size >= n or depth >= ids.size:
                break
            depth = min(ids.size, deeper(depth, depth, int(unseen.size), n))
        keep = unseen[:n]
        return candidates(ids[keep], s[keep], context)
