"""Leave-last-out evaluation with full-corpus ranking.

Per user (canonical order): test target = last event, history = everything before it;
validation target = second-to-last, history = everything before that. Every model ranks the
whole item vocabulary, seen history items excluded; a target the user already saw counts as
a miss for every model. Metrics per case, then averaged over users:

* ``hr@10``   -- target in the top 10;  ``ndcg@10`` -- ``1 / log2(rank + 2)`` if rank < 10
* ``recall@K`` -- target in the top K (one target per user, so recall = hit rate)

LongRetriever is scored through the one planner (:mod:`longretriever.core.planner`), as the
offline reference and the online service are (``planner.answer`` over an exact search); its
list for K is the first K of its longest answer (answers are prefix-consistent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from longretriever.core.errors import ConfigError
from longretriever.core.features import INPUT_NAMES, build_encoder_inputs
from longretriever.core.planner import (Catalog, ItemContexts, SequenceHistory, UserPlan, answer, context_sizes,
                                        plan_user)
from longretriever.core.ranking import ExactSearch
from longretriever.export.train import Split

METRICS = ("hr@10", "ndcg@10", "recall@50", "recall@100", "recall@200")
CUTOFFS = (10, 50, 100, 200)
MISS = np.iinfo(np.int64).max


def metrics_from_rank(rank: int) -> dict[str, float]:
    """0-based rank of the target in a full ranking (``MISS`` when absent)."""
    hit10 = rank < 10
    return {"hr@10": float(hit10), "ndcg@10": float(1.0 / np.log2(rank + 2)) if hit10 else 0.0,
            "recall@50": float(rank < 50), "recall@100": float(rank < 100), "recall@200": float(rank < 200)}


def metrics_from_lists(lists: dict[int, Sequence[int]], target: int) -> dict[str, float]:
    """Per-cutoff ranked id lists (the K-list may differ from a prefix of a longer list)."""
    l10 = list(lists[10])[:10]
    pos = l10.index(target) if target in l10 else None
    out = {"hr@10": float(pos is not None),
           "ndcg@10": float(1.0 / np.log2(pos + 2)) if pos is not None else 0.0}
    for kk in (50, 100, 200):
        out[f"recall@{kk}"] = float(target in set(list(lists[kk])[:kk]))
    return out


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {m: 0.0 for m in METRICS}
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}


@dataclass
class Cases:
    users: np.ndarray  # user index into split.users
    ends: np.ndarray  # target position (= history length)
    targets: np.ndarray  # dense target ids (-1 unknown)


def make_cases(split: Split, which: str = "test") -> Cases:
    off = 1 if which == "test" else 2
    us = [i for i, u in enumerate(split.users) if len(u) >= 3]
    ends = np.array([len(split.users[i]) - off for i in us], np.int64)
    tg = np.array([split.users[i].items[e] for i, e in zip(us, ends)], np.int64)
    return Cases(np.array(us, np.int64), ends, split.vocab.dense(tg))


def _seen_dense(split: Split, cases: Cases, j: int) -> np.ndarray:
    u = split.users[cases.users[j]]
    d = split.vocab.dense(np.unique(u.items[:cases.ends[j]]))
    return d[d >= 0]


def ranks_from_scores(split: Split, cases: Cases, scores_fn, chunk: int = 256,
                      exclude_seen: bool = True) -> np.ndarray:
    """``scores_fn(case indices) -> [n, N]`` full-corpus scores; returns 0-based target ranks
    (strictly-better count among unseen items -- all items when ``exclude_seen`` is False --,
    ties broken by smaller dense id)."""
    ranks = np.full(cases.users.size, MISS, np.int64)
    for s in range(0, cases.users.size, chunk):
        idx = np.arange(s, min(s + chunk, cases.users.size))
        sc = np.asarray(scores_fn(idx), dtype=np.float64)
        for r, j in enumerate(idx):
            t = cases.targets[j]
            seen = _seen_dense(split, cases, j) if exclude_seen else np.zeros(0, np.int64)
            if t < 0 or np.isin(t, seen):
                continue
            row = np.nan_to_num(sc[r], nan=-np.inf)  # a NaN score never helps a model
            row[seen] = -np.inf
            st = row[t]
            if not np.isfinite(st):
                continue
            ranks[j] = int(np.count_nonzero(row > st) + np.count_nonzero(row[:t] == st))
    return ranks


def history_rows(split: Split, cases: Cases, idx: np.ndarray, n: int) -> list[np.ndarray]:
    out = []
    for j in idx:
        u = split.users[cases.users[j]]
        e = cases.ends[j]
        out.append(split.vocab.dense(u.items[max(0, e - n):e]))
    return out


def eval_popularity(split: Split, cases: Cases, exclude_seen: bool = True) -> np.ndarray:
    pop = split.train_freq.astype(np.float64)
    return ranks_from_scores(split, cases, lambda idx: np.broadcast_to(pop, (idx.size, pop.size)),
                             exclude_seen=exclude_seen)


def eval_oracle(split: Split, cases: Cases, truth, exclude_seen: bool = True) -> np.ndarray:
    """The ceiling of a synthetic set: the generator's own probabilities of each case's
    target position (:func:`longretriever.data.synth.oracle_scores`), ranked under the same
    protocol as every model. ``truth`` is a :class:`longretriever.data.synth.Truth`."""
    from longretriever.data.synth import oracle_scores

    row_of = {int(u): i for i, u in enumerate(truth.user_ids.tolist())}
    cols = split.vocab.dense(truth.item_ids)  # generator item index -> dense id (-1: never in the data)
    keep = cols >= 0

    def scores(idx):
        out = np.zeros((idx.size, len(split.vocab)))
        for r, j in enumerate(idx):
            u = split.users[cases.users[j]]
            ui, e = row_of.get(u.user_id), int(cases.ends[j])
            if ui is None:
                raise ConfigError(f"the truth file has no user {u.user_id}: it belongs to another data set")
            base = int(truth.ev_offset[ui])
            if not np.array_equal(truth.item_ids[truth.ev_item[base:base + e]], u.items[:e]):
                raise ConfigError(f"user {u.user_id}: the truth file does not match the events (regenerate both)")
            out[r, cols[keep]] = oracle_scores(truth, ui, e)[keep]
        return out
    return ranks_from_scores(split, cases, scores, exclude_seen=exclude_seen)


@torch.no_grad()
def eval_sasrec(model, split: Split, cases: Cases, exclude_seen: bool = True) -> np.ndarray:
    model.eval()
    emb = model.items.all().cpu().numpy()

    def scores(idx):
        return model.user_vectors(history_rows(split, cases, idx, model.n)).cpu().numpy() @ emb.T
    return ranks_from_scores(split, cases, scores, exclude_seen=exclude_seen)


@torch.no_grad()
def eval_multi_interest(model, split: Split, cases: Cases, exclude_seen: bool = True) -> np.ndarray:
    """Merge of per-interest full rankings by max score (ComiRec's aggregation)."""
    model.eval()
    emb = model.items.all().cpu().numpy()

    def scores(idx):
        ints = model.interests(history_rows(split, cases, idx, model.n)).cpu().numpy()  # B,K,d
        return (ints @ emb.T).max(axis=1)
    return ranks_from_scores(split, cases, scores, exclude_seen=exclude_seen)


@dataclass
class LRPlans:
    plans: list[UserPlan | None]  # None: nothing to plan from (counts as a miss)
    row_owner: np.ndarray  # case index per encoder row
    inputs: list[dict[str, np.ndarray]]  # encoder input chunks (model independent)
    sizes: dict[int, int]  # items per context
    exclude_seen: bool = True  # seen items excluded (the default protocol) or scored too


def split_catalog(split: Split, k: int, w: int, scorer=None) -> Catalog:
    """The planner's view of a split's item table (what a bundle of it would carry)."""
    return Catalog(k, w, ItemContexts(split.vocab.item_ids, split.item_contexts),
                   context_sizes(split.item_contexts), scorer)


def plan_cases(split: Split, cases: Cases, k: int, w: int, max_contexts: int = 8,
               chunk: int = 256, scorer=None, exclude_seen: bool = True) -> LRPlans:
    """Planner plans (``plan_user``) for every case; ``scorer`` = the learned context choice
    (None = recency-weighted frequency)."""
    catalog = split_catalog(split, k, w, scorer)
    plans, owner, rows, recs, ctxs = [], [], [], [], []
    for j in range(cases.users.size):
        u = split.users[cases.users[j]]
        e = cases.ends[j]
        p = plan_user(SequenceHistory(u.items[:e], u.ts[:e], u.contexts[:e]), max_contexts, catalog)
        plans.append(p)
        if p is None:
            continue
        for r, c in zip(p.ctx_rows, p.contexts):
            owner.append(j)
            rows.append(r)
            recs.append(p.recent)
            ctxs.append(c)
    inputs = [build_encoder_inputs(rows[s:s + chunk], recs[s:s + chunk], ctxs[s:s + chunk],
                                   split.vocab, k, w) for s in range(0, len(rows), chunk)]
    return LRPlans(plans, np.asarray(owner, np.int64), inputs, dict(catalog.sizes), exclude_seen)


@torch.no_grad()
def eval_longretriever(model, split: Split, cases: Cases, lp: LRPlans,
                       cutoffs: Sequence[int] = CUTOFFS) -> list[dict[str, float]]:
    """Per-case metrics from the planner's multi-context answers, under the plans' protocol
    (``lp.exclude_seen``). An answer for ``K`` is the first ``K`` of the longest one."""
    model.eval()
    dev = model.item_ctx.device
    vecs = [model(*[torch.as_tensor(x[n], device=dev) for n in INPUT_NAMES]).cpu().numpy() for x in lp.inputs]
    vecs = np.concatenate(vecs) if vecs else np.zeros((0, model.cfg.dim), np.float32)
    ids = split.vocab.item_ids
    search = ExactSearch(ids, split.item_contexts, model.all_item_vectors().cpu().numpy())
    starts = np.searchsorted(lp.row_owner, np.arange(len(lp.plans)))
    longest = max(max(cutoffs), 200)
    out = []
    for j, plan in enumerate(lp.plans):
        target = int(ids[cases.targets[j]]) if cases.targets[j] >= 0 else None
        if plan is None or target is None:
            out.append(metrics_from_rank(MISS))
            continue
        u = split.users[cases.users[j]]
        e = cases.ends[j]
        history = SequenceHistory(u.items[:e], u.ts[:e], u.contexts[:e])
        if lp.exclude_seen and bool(history.seen_mask(np.array([target]))[0]):
            out.append(metrics_from_rank(MISS))
            continue
        vectors = {c: vecs[starts[j] + i] for i, c in enumerate(plan.contexts)}
        got = [cd.item_id for cd in answer(plan.query(longest, lp.exclude_seen), vectors, search, history,
                                            lp.sizes, deep=search)]
        out.append(metrics_from_lists({kk: got[:kk] for kk in (10, 50, 100, 200)}, target))
    return out


def rank_metrics(ranks: np.ndarray) -> list[dict[str, float]]:
    return [metrics_from_rank(int(r)) for r in ranks]


def quartiles(split: Split, cases: Cases, rows: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """Metrics per history-length quartile (shortest first); users split into 4 equal groups."""
    order = np.argsort(cases.ends, kind="stable")
    return [mean_metrics([rows[i] for i in grp]) for grp in np.array_split(order, 4)]
