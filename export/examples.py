"""Training examples as flat arrays, so a batch is a few numpy gathers instead of a Python
loop over examples.

:class:`EventIndex` holds every user's events twice: in canonical time order (users
concatenated) and grouped by (user, context), time order inside a group. An event is one
global index ``e``; for it:

* the **hard search** (the newest ``k`` earlier events of its context) is the slice of the
  grouped array that ends at ``ctx_pos[e]`` and is ``min(k, ctx_rank[e])`` long;
* the **recent window** (the newest ``w`` earlier events of any context) is the slice of the
  time-ordered array that ends at ``e`` and is ``min(w, position in the user)`` long;
* **what the user already consumed in that context** (the items serving excludes, so the
  training softmax excludes them too) is the whole grouped slice before ``ctx_pos[e]``.

The rows go through :func:`longretriever.core.features.pack_slices`, the one layout rule that
serving's :func:`~longretriever.core.features.build_encoder_inputs` also uses, so a training row
equals the row serving would build from the same history (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from longretriever.core.features import pack_slices

EMPTY = np.zeros(0, np.int64)


@dataclass(frozen=True)
class EventIndex:
    items: np.ndarray  # int64 [E] dense ids, users concatenated, each in canonical order
    contexts: np.ndarray  # int64 [E] context of each event
    user_start: np.ndarray  # int64 [U + 1] user u's events are items[user_start[u]:user_start[u+1]]
    user_of: np.ndarray  # int64 [E] user index of each event
    by_ctx: np.ndarray  # int64 [E] dense ids grouped by (user, context), time order inside a group
    ctx_pos: np.ndarray  # int64 [E] where each event sits in by_ctx
    ctx_rank: np.ndarray  # int64 [E] earlier events of the same user and context

    @classmethod
    def of(cls, split) -> "EventIndex":
        """From a :class:`longretriever.export.train.Split` (every item is in its vocabulary)."""
        lengths = np.fromiter((len(u) for u in split.users), np.int64, len(split.users))
        start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if not split.users:
            return cls(EMPTY, EMPTY, start, EMPTY, EMPTY, EMPTY, EMPTY)
        items = split.vocab.dense(np.concatenate([u.items for u in split.users]))
        if (items < 0).any():
            raise ValueError("every training item must be in the split's vocabulary")
        contexts = np.concatenate([u.contexts for u in split.users]).astype(np.int64)
        user_of = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
        order = np.lexsort((np.arange(items.size), contexts, user_of))  # (user, context, time)
        ctx_pos = np.empty(items.size, np.int64)
        ctx_pos[order] = np.arange(items.size)
        key_u, key_c = user_of[order], contexts[order]
        first = np.ones(items.size, bool)
        first[1:] = (key_u[1:] != key_u[:-1]) | (key_c[1:] != key_c[:-1])
        group_start = np.maximum.accumulate(np.where(first, np.arange(items.size), 0))
        ctx_rank = np.empty(items.size, np.int64)
        ctx_rank[order] = np.arange(items.size) - group_start
        return cls(items, contexts, start, user_of, items[order], ctx_pos, ctx_rank)

    def __len__(self) -> int:
        return int(self.items.size)

    def position(self, ev: np.ndarray) -> np.ndarray:
        """Position of each event inside its user's sequence."""
        ev = np.asarray(ev, np.int64)
        return ev - self.user_start[self.user_of[ev]]

    def search_lengths(self, ev: np.ndarray, k: int) -> np.ndarray:
        """Hard-search length of each event's example: ``min(k, earlier events of its context)``."""
        return np.minimum(self.ctx_rank[np.asarray(ev, np.int64)], max(k, 0))

    def encoder_inputs(self, ev: np.ndarray, k: int, w: int) -> dict[str, np.ndarray]:
        """The encoder input dict of the examples whose targets are the events ``ev``: the hard
        search of the target's context and the recent window, both strictly before the target."""
        ev = np.asarray(ev, np.int64)
        ci, ca, cm = pack_slices(self.by_ctx, self.ctx_pos[ev], self.search_lengths(ev, k))
        ri, ra, rm = pack_slices(self.items, ev, np.minimum(self.position(ev), max(w, 0)))
        return {"ctx_items": ci, "ctx_age": ca, "ctx_mask": cm, "recent_items": ri, "recent_age": ra,
                "recent_mask": rm, "context": self.contexts[ev].copy()}

    def earlier_in_context(self, ev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every item the user consumed in the target's context before each event in ``ev``:
        (row in ``ev``, dense id) pairs."""
        ev = np.asarray(ev, np.int64)
        n = self.ctx_rank[ev]
        rows = np.repeat(np.arange(ev.size, dtype=np.int64), n)
        first = np.repeat(self.ctx_pos[ev] - n, n)
        within = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        return rows, self.by_ctx[first + within]

    def windows(self, ev: np.ndarray, n: int) -> np.ndarray:
        """int64 [B, n]: dense id + 1 of the newest ``n`` events before each event (any
        context), oldest first and right-aligned (0 = padding on the left) -- the baselines'
        layout (``baselines.left_pad``)."""
        ev = np.asarray(ev, np.int64)
        length = np.minimum(self.position(ev), n)
        col = np.arange(n, dtype=np.int64)[None, :]
        ok = col >= n - length[:, None]
        src = np.where(ok, ev[:, None] - n + col, 0)
        return np.where(ok, self.items[src] + 1, 0)


def training_events(split, index: EventIndex, budget: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's training targets as global event indices, shuffled: every training
    position of every user (``budget <= 0``) or up to ``budget`` of them per user, drawn
    without replacement."""
    lo_hi = np.array([split.train_range(u) for u in split.users], np.int64).reshape(-1, 2)
    counts = np.maximum(lo_hi[:, 1] - lo_hi[:, 0], 0)
    owner = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    ev = index.user_start[owner] + lo_hi[owner, 0] + within
    if budget > 0 and ev.size:
        keys = rng.random(ev.size)
        order = np.lexsort((keys, owner))
        rank = np.empty(ev.size, np.int64)
        rank[order] = within  # owner-sorted order keeps each user's block in place
        ev = ev[rank < budget]
    return ev[rng.permutation(ev.size)]


def context_batches(index: EventIndex, ev: np.ndarray, batch: int, k: int, bucket: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Cut shuffled targets into batches of one context each (the in-context softmax ranks
    one context's items), in pools of ``bucket * batch`` sorted by hard-search length so a
    batch pads to similar lengths; the batch order is shuffled. Every target once; batches of
    fewer than 2 targets are dropped."""
    ev = np.asarray(ev, np.int64)
    ctx = index.contexts[ev]
    order = np.argsort(ctx, kind="stable")
    ev, ctx = ev[order], ctx[order]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(ctx)) + 1, [ev.size]]).astype(np.int64)
    pool = batch * max(1, bucket)
    out: list[np.ndarray] = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        group = ev[a:b]
        for s in range(0, group.size, pool):
            p = group[s:s + pool]
            if bucket >= 2:
                p = p[np.argsort(index.search_lengths(p, k), kind="stable")]
            out += [p[i:i + batch] for i in range(0, p.size, batch) if p[i:i + batch].size >= 2]
    return [out[i] for i in rng.permutation(len(out))]
