"""Synthetic stand-ins shared by the benchmarks and the tests (one implementation of each):

* :func:`synthetic_bundle` -- a real :class:`longretriever.core.bundle.Bundle` over random
  L2-normalised item vectors whose encoder session (:class:`MeanPoolSession`) mean-pools the
  searched and recent items plus a context offset: deterministic and cheap, not trained;
* :class:`MemoryState` -- an in-memory :class:`longretriever.retriever.history.StateReader`
  holding whole sequences (canonical order), for service tests and the synthetic query bench.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from longretriever.core.bundle import Bundle
from longretriever.core.context_predictor import ContextPredictor
from longretriever.core.features import ItemVocab
from longretriever.core.sequence import UserSequence, canonical_order


class MeanPoolSession:
    """An :class:`~longretriever.core.bundle.EncoderSession` over the encoder-input contract:
    mean of the searched and recent items' vectors plus ``0.1 * context``-scaled offset,
    L2-normalised. Counts the rows it encoded (``rows``)."""

    def __init__(self, item_embeddings: np.ndarray, n_contexts: int, seed: int = 0) -> None:
        d = item_embeddings.shape[1]
        self.table = np.vstack([np.zeros((1, d), np.float32), item_embeddings.astype(np.float32)])
        rng = np.random.default_rng(seed + 1)
        self.ctx = (rng.standard_normal((n_contexts, d)) * 0.1).astype(np.float32)
        self.rows = 0

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        ci, cm = feeds["ctx_items"], feeds["ctx_mask"]
        ri, rm = feeds["recent_items"], feeds["recent_mask"]
        v = (self.table[ci] * cm[..., None]).sum(1) + (self.table[ri] * rm[..., None]).sum(1)
        v = v / np.maximum(cm.sum(1) + rm.sum(1), 1.0)[:, None] + self.ctx[feeds["context"]]
        self.rows += int(v.shape[0])
        return [(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)]


def synthetic_bundle(n_items: int, n_contexts: int = 8, dim: int = 64, seed: int = 0, hard_k: int = 64,
                     w: int = 64, first_id: int = 1_000_000, item_contexts: np.ndarray | None = None,
                     predictor: ContextPredictor | None = None, context_choice: str = "frequency") -> Bundle:
    """A bundle of ``n_items`` random items in contexts ``1..n_contexts`` (0 = unknown)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + n_items, dtype=np.int64)
    ctx = (np.asarray(item_contexts, np.int32) if item_contexts is not None
           else rng.integers(1, n_contexts + 1, size=n_items).astype(np.int32))
    v = rng.standard_normal((n_items, dim)).astype(np.float32)
    emb = v / np.linalg.norm(v, axis=1, keepdims=True)
    names = ("unknown", *[f"cat{i}" for i in range(1, n_contexts + 1)])
    order = np.argsort(ctx, kind="stable")
    bounds = np.flatnonzero(np.diff(ctx[order])) + 1
    ctx_items = {int(ctx[ch[0]]): ch for ch in np.split(order, bounds) if ch.size}
    config = {"k": hard_k, "w": w, "dim": dim, "context_choice": context_choice}
    return Bundle(Path("<synthetic>"), f"synthetic-{n_items}-{n_contexts}-{dim}-{seed}", ids, ctx, emb,
                  rng.random(n_items), names, config, {}, MeanPoolSession(emb, len(names), seed),
                  ItemVocab(ids), ctx_items, predictor)


class MemoryState:
    """Whole sequences in memory, read like the RocksDB state (the serving read methods)."""

    def __init__(self, item_contexts: dict[int, int] | None = None) -> None:
        self.item_ctx = dict(item_contexts or {})
        self.seqs: dict[int, UserSequence] = {}
        self.offsets: dict[int, int] = {0: 0}

    @classmethod
    def for_bundle(cls, bundle: Bundle) -> "MemoryState":
        return cls(dict(zip(bundle.item_ids.tolist(), bundle.item_contexts.tolist())))

    def add(self, user: int, items: np.ndarray, ts: np.ndarray, contexts: np.ndarray | None = None) -> None:
        """Add events (any order; exact (item, ts) duplicates are kept once)."""
        items = np.asarray(items, np.int64)
        ts = np.asarray(ts, np.int64)
        cx = (np.asarray(contexts, np.int32) if contexts is not None
              else np.array([self.item_ctx.get(i, 0) for i in items.tolist()], np.int32))
        old = self.seqs.get(user)
        if old is not None:
            items, ts, cx = (np.concatenate([old.items, items]), np.concatenate([old.ts, ts]),
                             np.concatenate([old.contexts, cx]))
        o = canonical_order(ts, items)
        items, ts, cx = items[o], ts[o], cx[o]
        keep = np.ones(items.size, bool)
        keep[1:] = (items[1:] != items[:-1]) | (ts[1:] != ts[:-1])
        self.seqs[user] = UserSequence(items[keep], ts[keep], cx[keep])

    @contextmanager
    def reading(self) -> Iterator[None]:
        yield

    def watermark(self) -> dict[int, int]:
        return dict(self.offsets)

    def users(self) -> Iterator[int]:
        return iter(sorted(self.seqs))

    def recent(self, user: int, n: int = 1000) -> UserSequence | None:
        s = self.seqs.get(user)
        if s is None:
            return None
        lo = max(0, len(s) - n)
        return UserSequence(s.items[lo:], s.ts[lo:], s.contexts[lo:])

    def context_tail(self, user: int, ctx: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.seqs.get(user)
        if s is None or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        m = s.contexts == ctx
        return s.items[m][-k:], s.ts[m][-k:]

    def context_items(self, user: int, ctx: int) -> np.ndarray:
        s = self.seqs.get(user)
        return s.items[s.contexts == ctx] if s is not None else np.zeros(0, np.int64)

    def context_counts(self, user: int) -> dict[int, int]:
        s = self.seqs.get(user)
        if s is None:
            return {}
        return {int(c): int((s.contexts == c).sum()) for c in np.unique(s.contexts)}

    def seen_mask(self, user: int, items: np.ndarray) -> np.ndarray:
        s = self.seqs.get(user)
        items = np.asarray(items, np.int64)
        return np.isin(items, s.items) if s is not None else np.zeros(items.shape, bool)

    def sequence(self, user: int, ctx: int | None = None) -> UserSequence | None:
        s = self.seqs.get(user)
        if s is None:
            return None
        m = np.ones(len(s), bool) if ctx is None else s.contexts == ctx
        return UserSequence(s.items[m], s.ts[m], s.contexts[m])


def random_histories(bundle: Bundle, state: MemoryState, users: int = 200, events: int = 300,
                     seed: int = 1) -> None:
    """Fill ``state`` with users whose context mix is skewed (so weights and quotas differ)."""
    rng = np.random.default_rng(seed)
    cs = np.unique(bundle.item_contexts)
    cs = cs[cs > 0]
    for u in range(users):
        pref = rng.dirichlet(np.full(cs.size, 0.5))
        ctx = rng.choice(cs, size=events, p=pref)
        items = np.empty(events, np.int64)
        for c in np.unique(ctx):
            pool = bundle.item_ids[bundle.item_contexts == c]
            m = ctx == c
            items[m] = rng.choice(pool, size=int(m.sum()))
        ts = np.sort(rng.integers(1_700_000_000_000, 1_700_100_000_000, size=events))
        state.add(u, items, ts, ctx.astype(np.int32))
