"""Raw item ids -> the exact encoder input dict. Training, export, evaluation and serving all
call :func:`build_encoder_inputs`, so the model never sees two different featurisations.

Encoder inputs (``B`` rows, ``L``/``R`` = longest row after dropping unknown ids, at least 1):

==============  =============  ===========================================================
name            dtype / shape  meaning
==============  =============  ===========================================================
ctx_items       int64 [B, L]   dense index + 1 of the hard-searched items, oldest first,
                               right-padded with 0
ctx_age         int64 [B, L]   recency bucket of each searched item: ``1 + floor(log2(age + 1))``
                               with age 0 for the newest, capped at ``AGE_BUCKETS - 1``; 0 = pad
ctx_mask        float32 [B, L] 1.0 for real items, 0.0 for padding
recent_items    int64 [B, R]   dense index + 1 of the recent cross-context window, oldest first
recent_age      int64 [B, R]   recency bucket within the window (same rule as ctx_age)
recent_mask     float32 [B, R] 1.0 / 0.0
context         int64 [B]      context id the user vector is for (0 = unknown / all)
==============  =============  ===========================================================

Rows keep the newest ``k`` (``w``) known items. A row with no known items is all padding;
the model maps it to a finite vector (no NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

AGE_BUCKETS = 16  # 1 + floor(log2(age + 1)) <= 15 for any age < 32767
INPUT_NAMES = ("ctx_items", "ctx_age", "ctx_mask", "recent_items", "recent_age", "recent_mask",
               "context")


@dataclass(frozen=True)
class ItemVocab:
    """Raw item id <-> dense index ``0..N-1`` (position in the sorted raw ids).

    Embedding tables use ``dense + 1`` so that row 0 is padding."""

    item_ids: np.ndarray  # int64, sorted ascending, unique

    @classmethod
    def from_ids(cls, ids: np.ndarray | Sequence[int]) -> "ItemVocab":
        return cls(np.unique(np.asarray(ids, dtype=np.int64)))

    def __len__(self) -> int:
        return int(self.item_ids.size)

    def dense(self, raw: np.ndarray | Sequence[int]) -> np.ndarray:
        """Raw ids -> dense indices; unknown ids map to -1."""
        raw = np.asarray(raw, dtype=np.int64)
        if self.item_ids.size == 0:
            return np.full(raw.shape, -1, np.int64)
        pos = np.searchsorted(self.item_ids, raw)
        pos_c = np.minimum(pos, self.item_ids.size - 1)
        return np.where(self.item_ids[pos_c] == raw, pos_c, -1).astype(np.int64)

    def raw(self, dense: np.ndarray | Sequence[int]) -> np.ndarray:
        return self.item_ids[np.asarray(dense, dtype=np.int64)]


def age_buckets(n: int) -> np.ndarray:
    """Recency buckets for a row of ``n`` items given oldest first (newest -> bucket 1)."""
    age = np.arange(n - 1, -1, -1, dtype=np.int64)
    return np.minimum(1 + np.floor(np.log2(age + 1)).astype(np.int64), AGE_BUCKETS - 1)


def pack_slices(flat: np.ndarray, ends: np.ndarray, lengths: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one layout rule of every encoder row. Row ``i`` is ``flat[ends[i] - lengths[i] :
    ends[i]]`` (dense indices, oldest first); returns (dense index + 1 [B, L], recency bucket
    [B, L], mask [B, L]), right-padded to ``L = max(1, max(lengths))``. Vectorised: training
    gathers its rows straight from flat per-user arrays with it (``export.examples``), serving
    and evaluation through :func:`build_encoder_inputs`."""
    ends = np.asarray(ends, np.int64).reshape(-1)
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    width = max(1, int(lengths.max()) if lengths.size else 1)
    col = np.arange(width, dtype=np.int64)[None, :]
    n = lengths[:, None]
    ok = col < n
    src = np.where(ok, ends[:, None] - n + col, 0)
    items = np.where(ok, np.asarray(flat, np.int64)[src] + 1, 0) if flat.size else np.zeros(ok.shape, np.int64)
    age = np.where(ok, n - 1 - col, 0)  # newest = 0
    buckets = np.minimum(1 + np.floor(np.log2(age + 1.0)).astype(np.int64), AGE_BUCKETS - 1)
    return items, np.where(ok, buckets, 0), ok.astype(np.float32)


def _pack(vocab: ItemVocab, rows: list[np.ndarray], cap: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop unknown ids, keep the newest ``cap`` per row, then :func:`pack_slices`."""
    b = len(rows)
    arrs = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]
    lens = np.fromiter((a.size for a in arrs), np.int64, b)
    flat = np.concatenate(arrs) if b else np.zeros(0, np.int64)
    row = np.repeat(np.arange(b), lens)
    idx = vocab.dense(flat)
    ok = idx >= 0
    idx, row = idx[ok], row[ok]
    counts = np.bincount(row, minlength=b).astype(np.int64)
    ends = np.cumsum(counts)
    return pack_slices(idx, ends, np.minimum(counts, max(cap, 0)))


def build_encoder_inputs(ctx_items: list[np.ndarray], recent_items: list[np.ndarray],
                         contexts: list[int] | np.ndarray, vocab: ItemVocab, k: int,
                         w: int) -> dict[str, np.ndarray]:
    """Build the ONNX/torch encoder input dict for a batch of user-context rows.

    ``ctx_items[i]``: raw item ids of row ``i``'s hard-searched context subsequence, oldest
    first; ``recent_items[i]``: raw ids of its recent cross-context window, oldest first;
    ``contexts[i]``: the context id. Unknown raw ids are dropped, then the newest ``k`` / ``w``
    are kept. See the module docstring for the output layout."""
    contexts = np.asarray(contexts, dtype=np.int64).reshape(-1)
    b = contexts.size
    if len(ctx_items) != b or len(recent_items) != b:
        raise ValueError(f"row count mismatch: {len(ctx_items)} ctx rows, "
                         f"{len(recent_items)} recent rows, {b} contexts")
    ci, ca, cm = _pack(vocab, ctx_items, k)
    ri, ra, rm = _pack(vocab, recent_items, w)
    return {"ctx_items": ci, "ctx_age": ca, "ctx_mask": cm, "recent_items": ri,
            "recent_age": ra, "recent_mask": rm, "context": contexts.copy()}
