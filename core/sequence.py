"""Pure functions over one user's behaviour sequence. The single source of truth for
ordering and for the hard search, shared by training, the stream state and serving.

Canonical order: a user's events are ordered by ``(ts, item_id)`` ascending. It does not
depend on arrival order, so every replay of the same events gives the same sequence, and
two events with the same ``(item_id, ts, action)`` are the same event (the dedup key).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class UserSequence:
    """A user's events in canonical (ts, item_id) order, oldest first."""

    items: np.ndarray
    ts: np.ndarray
    contexts: np.ndarray

    def __len__(self) -> int:
        return int(self.items.size)


def canonical_order(ts: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Permutation that sorts events by (ts, item_id); stable for exact ties. Sorting by
    ``ts`` alone (a stable merge sort, fast on already-sorted runs such as per-context
    segments) is the same permutation unless two events share a ``ts``; then both keys."""
    ts, items = np.asarray(ts), np.asarray(items)
    order = np.argsort(ts, kind="stable")
    s = ts[order]
    if s.size > 1 and bool((s[1:] == s[:-1]).any()):
        return np.lexsort((items, ts))
    return order


def context_positions(contexts: np.ndarray) -> dict[int, np.ndarray]:
    """For each context, the ascending positions of its events in the sequence."""
    contexts = np.asarray(contexts)
    order = np.argsort(contexts, kind="stable")
    sorted_ctx = contexts[order]
    bounds = np.flatnonzero(np.diff(sorted_ctx)) + 1
    out: dict[int, np.ndarray] = {}
    for chunk in np.split(order, bounds):
        if chunk.size:
            out[int(contexts[chunk[0]])] = chunk
    return out


def hard_search_positions(positions: np.ndarray, k: int, end: int | None = None) -> np.ndarray:
    """The hard search on one context's ascending positions: the newest ``k`` of them that
    lie strictly before sequence position ``end`` (all when ``end`` is None), oldest first."""
    if k <= 0:
        return positions[:0]
    stop = positions.size if end is None else int(np.searchsorted(positions, end, side="left"))
    return positions[max(0, stop - k) : stop]


def hard_search(contexts: np.ndarray, context: int, k: int, end: int | None = None) -> np.ndarray:
    """Positions of the newest ``k`` events of ``context`` before ``end``, oldest first."""
    positions = np.flatnonzero(np.asarray(contexts) == context)
    return hard_search_positions(positions, k, end)


def recent_window(length: int, w: int, end: int | None = None) -> np.ndarray:
    """Positions of the newest ``w`` events of any context before ``end``, oldest first."""
    stop = length if end is None else min(end, length)
    return np.arange(max(0, stop - w), stop)
