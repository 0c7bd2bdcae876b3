"""Item representations from co-occurrence, before any gradient step: PPMI-SVD.

Two items are neighbours when a user consumes them close together *in the same context*
(within ``window`` events of the user's per-context subsequence -- the sequence the hard
search reads). For each context, the positive pointwise mutual information of those
co-occurrence counts (context-distribution smoothing 0.75, as word2vec's negative sampling
implicitly factorises; Levy & Goldberg 2014) is factorised by a truncated SVD; an item's
vector is ``U[:, :dim] * sqrt(S[:dim])`` of its context's block. Only training positions are
counted (the split's train ranges), so validation and test events never shape the vectors.

Each context gets its own basis: retrieval ranks items inside one context at a time, and a
shared low-rank space would let large contexts crowd out the small ones. A *global* PPMI-SVD
(pairs within ``window`` events of the user's whole sequence, any contexts) carries what the
per-context blocks cannot: which items go together across contexts, and -- on data whose
contexts are coarse (MovieLens genres) -- finer taste inside a context. ``item_embeddings``
picks the mode (``TrainConfig.pretrain``): ``ppmi`` (per-context only), ``ppmi_global``
(global only) or ``ppmi_mix`` (the default: per-context dimensions next to global ones, each
part scaled to unit mean norm). Measured in docs/model.md: per-context alone is best on
synthetic data whose contexts are the generator's interests, global alone on MovieLens; the
mix keeps most of both. The result initialises the two-tower model's item embeddings.
"""

from __future__ import annotations

import numpy as np
import torch

from longretriever.export.train import Split

SMOOTHING = 0.75
MODES = ("ppmi", "ppmi_global", "ppmi_mix")
MIX_GLOBAL_SHARE = 0.5  # ppmi_mix: share of the dimensions from the global factorisation


def _window_pairs(seqs, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of every ordered pair at most ``window`` apart inside each dense-id sequence
    (unknown ids, -1, dropped first)."""
    left, right = [], []
    for s in seqs:
        s = s[s >= 0]
        for off in range(1, min(window, s.size - 1) + 1):
            left.append(s[:-off])
            right.append(s[off:])
    if not left:
        z = np.zeros(0, np.int64)
        return z, z
    return np.concatenate(left), np.concatenate(right)


def _train_prefixes(split: Split):
    """(user, end of its training prefix, that prefix as dense ids) per user."""
    for u in split.users:
        _, hi = split.train_range(u)
        yield u, hi, split.vocab.dense(u.items[:hi])


def context_pairs(split: Split, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense item ids (a, b) of every ordered pair of training events of one user and one
    context that are at most ``window`` apart in that user's per-context subsequence."""
    return _window_pairs((d[pos[pos < hi]] for u, hi, d in _train_prefixes(split)
                          for pos in u.pos_by_ctx.values()), window)


def global_pairs(split: Split, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense item ids (a, b) of every ordered pair of training events of one user at most
    ``window`` apart in the user's whole sequence (any contexts)."""
    return _window_pairs((d for _, _, d in _train_prefixes(split)), window)


def symmetric_counts(rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, count) of the symmetric co-occurrence matrix of the pairs, sorted by (a, b): each
    pair counts once as (a, b) and once as (b, a). One sort of the unordered pairs, half the
    size of sorting both directions."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    uniq, counts = np.unique(lo * n + hi, return_counts=True)
    a, b = uniq // n, uniq % n
    diag = a == b
    a2 = np.concatenate([a, b[~diag]])
    b2 = np.concatenate([b, a[~diag]])
    c2 = np.concatenate([np.where(diag, 2 * counts, counts), counts[~diag]])
    order = np.lexsort((b2, a2))
    return a2[order], b2[order], c2[order]


def ppmi_svd(rows: np.ndarray, cols: np.ndarray, n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``[n, dim]`` vectors from symmetric co-occurrence pairs of ``n`` local ids."""
    out = np.zeros((n, dim))
    if rows.size == 0 or n < 2 or dim < 1:
        return out
    a, b, counts = symmetric_counts(rows, cols, n)
    c = counts.astype(np.float64)
    total = c.sum()
    row_sum = np.bincount(a, weights=c, minlength=n)
    ctx = row_sum ** SMOOTHING
    ctx = ctx / ctx.sum() * total
    pmi = np.log(c * total / (row_sum[a] * ctx[b]))
    keep = pmi > 0
    if not keep.any():
        return out
    k = min(dim, n - 1)
    if n <= 2048:  # small blocks: exact SVD of the dense block
        m = np.zeros((n, n))
        m[a[keep], b[keep]] = pmi[keep]
        u, s, _ = np.linalg.svd(m, full_matrices=False)
    else:  # large blocks: randomised SVD of the sparse block (seeded)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        idx = torch.as_tensor(np.stack([a[keep], b[keep]]))
        sp = torch.sparse_coo_tensor(idx, torch.as_tensor(pmi[keep]), (n, n)).coalesce()
        u_t, s_t, _ = torch.svd_lowrank(sp, q=k + 8, niter=4)
        torch.random.set_rng_state(gen_state)
        u, s = u_t.numpy(), s_t.numpy()
    out[:, :k] = u[:, :k] * np.sqrt(s[:k])
    return out


def cooccurrence_embeddings(split: Split, dim: int, window: int = 50, seed: int = 0) -> np.ndarray:
    """float32 ``[N, dim]`` per-context PPMI-SVD vectors of the split's items (dense order),
    scaled to unit mean norm (items never co-occurring with another stay zero)."""
    rows, cols = context_pairs(split, window)
    ictx = np.asarray(split.item_contexts, np.int64)
    emb = np.zeros((len(split.vocab), dim))
    # one pass each: items grouped by context (their local ids), pairs grouped by context
    # (both items of a pair share it: they come from one per-context subsequence)
    by_item = np.argsort(ictx, kind="stable")
    ctxs, item_start, item_n = np.unique(ictx[by_item], return_index=True, return_counts=True)
    local = np.empty(ictx.size, np.int64)
    local[by_item] = np.arange(ictx.size) - np.repeat(item_start, item_n)
    pair_ctx = ictx[rows]
    by_pair = np.argsort(pair_ctx, kind="stable")
    rows, cols, pair_ctx = rows[by_pair], cols[by_pair], pair_ctx[by_pair]
    lo = np.searchsorted(pair_ctx, ctxs, side="left")
    hi = np.searchsorted(pair_ctx, ctxs, side="right")
    for c_i in range(ctxs.size):
        members = by_item[item_start[c_i]:item_start[c_i] + item_n[c_i]]
        a, b = int(lo[c_i]), int(hi[c_i])
        emb[members] = ppmi_svd(local[rows[a:b]], local[cols[a:b]], members.size, dim, seed)
    return _unit_mean_norm(emb).astype(np.float32)


def _unit_mean_norm(emb: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(emb, axis=1)
    scale = norms[norms > 0].mean() if (norms > 0).any() else 1.0
    return emb / scale


def global_embeddings(split: Split, dim: int, window: int = 50, seed: int = 0) -> np.ndarray:
    """float32 ``[N, dim]`` PPMI-SVD vectors from pairs in the users' whole sequences, unit mean norm."""
    rows, cols = global_pairs(split, window)
    return _unit_mean_norm(ppmi_svd(rows, cols, len(split.vocab), dim, seed)).astype(np.float32)


def item_embeddings(split: Split, mode: str, dim: int, window: int = 50, seed: int = 0) -> np.ndarray:
    """The initial item vectors of one pretraining mode (see the module docstring)."""
    if mode == "ppmi":
        return cooccurrence_embeddings(split, dim, window, seed)
    if mode == "ppmi_global":
        return global_embeddings(split, dim, window, seed)
    if mode == "ppmi_mix":
        g = int(round(dim * MIX_GLOBAL_SHARE))
        parts = [cooccurrence_embeddings(split, dim - g, window, seed), global_embeddings(split, g, window, seed)]
        return _unit_mean_norm(np.concatenate(parts, axis=1)).astype(np.float32)
    raise ValueError(f"unknown pretraining mode {mode!r}; use one of {MODES}")
