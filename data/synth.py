"""Seeded synthetic event logs with a planted multi-interest structure where long history matters.

Model (all draws from one ``numpy.random.default_rng(seed)``, fully deterministic):

* **Items** ``item_id = 1000 + 7 * i`` (deliberately not dense) are split into ``contexts``
  categories named ``c00``, ``c01``, ... (zero-padded to at least two digits). Category sizes
  vary (Dirichlet split, every category non-empty); inside a category item popularity is
  Zipf-ish (``1 / rank**ZIPF_S`` over a random ranking).
* **Interests**: each user has 2-6 long-lived interests (fewer only if ``contexts`` < 2..6).
  An interest is a distinct context plus a *user-specific* preferred cluster of 8-24 items of
  that context (sampled with flattened popularity, so users differ) with Zipf weights inside.
* **Sessions**: a user's history is a sequence of sessions (geometric lengths, mean
  ``SESSION_MEAN`` events). The history is cut into *eras* (about ``events_per_user / 8`` events,
  at most ``ERA_MAX`` and at least ``ERA_MIN``); each era has one primary interest that gets
  most sessions; a few short *recall* sessions go to another interest. Eras cycle through the
  user's interests in reshuffled rounds, so an interest goes dormant for one or more whole
  eras (thousands of events for 10k-event users) and then comes back **with the same preferred
  items**. A model that sees only the newest 50-200 events misses it; searching the long
  history by context finds the items.
* **Events** inside a session come from the interest's preferred cluster with probability
  ``P_PREFERRED``, otherwise from the interest's context by global popularity, with a small
  ``P_EXPLORE`` chance of a popular item of a random context.
* **Timestamps** (seconds) strictly increase per user, starting on 2015-01-01 UTC plus a random
  per-user offset of up to 30 days; 5-120 s between events of a session, ~8 h on average
  between sessions (both scaled down for very long histories so that a user's history spans
  at most ~4 years and never reaches today).
* **action** is ``"like"`` or ``"click"`` (likes more frequent on preferred items).

The events frame is user-major (by user id, then time), like MovieLens ``ratings.csv``;
:func:`longretriever.data.events.load_csv_events` sorts it by timestamp (stable), so equal
timestamps of different users replay in user-id order.

Planted property (checked in ``tests/unit/test_synth.py``): split each user's events into
history = all but the newest ``T`` and test = the newest ``T``; a substantial share of the
test items belong to a context absent from the newest 200 history events, yet that context
(and usually the very item) occurs in the older history.

Files written by :func:`write`: ``out`` is the events CSV (``user_id,item_id,timestamp,action``)
and the items CSV (``item_id,category``) is written next to it as ``<out stem>.items.csv``:
``events.csv`` -> ``events.items.csv``, ``data/syn`` -> ``data/syn.items.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from longretriever.core.errors import ConfigError
from longretriever.data.events import items_next_to

START_TS = 1_420_070_400  # 2015-01-01T00:00:00Z
ITEM_BASE, ITEM_STRIDE = 1000, 7
ZIPF_S = 1.1
MIN_INTERESTS, MAX_INTERESTS = 2, 6
CLUSTER_MIN, CLUSTER_MAX = 8, 24
SESSION_MEAN = 20.0
RECALL_MEAN = 5.0
P_RECALL = 0.06  # share of sessions that revisit a non-primary interest
P_PREFERRED = 0.85
P_EXPLORE = 0.02
ERA_MIN, ERA_MAX = 40, 2500
MAX_SPAN_S = 4 * 365 * 86400  # a user's history spans at most ~4 years (+ 30 days offset)


@dataclass(frozen=True)
class SynthData:
    events: pd.DataFrame  # user_id, item_id, timestamp (s), action
    items: pd.DataFrame  # item_id, category
    interests: pd.DataFrame  # planted truth: user_id, interest, category, items (tuple of ids)


def item_ids(items: int) -> np.ndarray:
    return ITEM_BASE + ITEM_STRIDE * np.arange(items, dtype=np.int64)


def context_names(contexts: int) -> list[str]:
    width = max(2, len(str(contexts - 1)))
    return [f"c{i:0{width}d}" for i in range(contexts)]


def _rank_sampler(weights: np.ndarray):
    """Sampling of a rank in ``[0, n)`` with probability proportional to ``weights[:n]``, for
    many different ``n`` at once: one shared 1-D cumulative array, so the binary search stays
    in cache (much faster than searching one big 2-D table)."""
    cum = np.cumsum(weights)

    def sample(n: np.ndarray, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(cum, u * cum[n - 1], side="right")
        return np.minimum(pos, n - 1)

    return sample


RANK_Q = 4096  # resolution of the quantised inverse CDF used for cluster draws


def _rank_table(weights: np.ndarray) -> np.ndarray:
    """Quantised inverse CDFs, flattened: entry ``n * RANK_Q + q`` is the rank drawn for uniform
    bucket ``q`` among the first ``n`` weights. One gather per draw (clusters are small)."""
    nmax = weights.size
    cum = np.cumsum(weights)
    mid = (np.arange(RANK_Q) + 0.5) / RANK_Q
    table = np.zeros((nmax + 1, RANK_Q), np.int64)
    for n in range(1, nmax + 1):
        table[n] = np.minimum(np.searchsorted(cum[:n] / cum[n - 1], mid, side="right"), n - 1)
    return table.ravel()


def generate_with_truth(users: int, events_per_user: int, items: int, contexts: int,
                        seed: int) -> SynthData:
    """Like :func:`generate`, plus the planted interests (for tests and analysis)."""
    if users < 1 or events_per_user < 1:
        raise ConfigError(f"users and events per user must be >= 1, got {users} and {events_per_user}")
    if contexts < 1 or items < contexts:
        raise ConfigError(f"need contexts >= 1 and items >= contexts (every category non-empty), "
                          f"got {contexts} contexts and {items} items")
    rng = np.random.default_rng(seed)
    U, E, N, C = int(users), int(events_per_user), int(items), int(contexts)

    # ---- items: categories of varying size, Zipf popularity inside each ----------------------
    sizes = 1 + rng.multinomial(N - C, rng.dirichlet(np.full(C, 2.0)))
    perm = rng.permutation(N)
    item_ctx = np.empty(N, np.int64)
    item_ctx[perm] = np.repeat(np.arange(C), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    wmax = int(sizes.max())
    members = np.zeros((C, wmax), np.int64)  # item index by popularity rank, per context
    col = np.arange(N) - np.repeat(starts, sizes)
    members[np.repeat(np.arange(C), sizes), col] = perm
    zipf = 1.0 / np.arange(1, wmax + 1, dtype=np.float64) ** ZIPF_S
    pop_rank = _rank_sampler(zipf)
    flat_rank = _rank_sampler(zipf ** 0.3)  # flattened popularity, for picking user clusters

    # ---- interests: distinct contexts per user, user-specific preferred clusters -------------
    n_int = np.minimum(rng.integers(MIN_INTERESTS, MAX_INTERESTS + 1, U), C)
    G = int(n_int.sum())
    int_user = np.repeat(np.arange(U), n_int)
    first = np.concatenate([[0], np.cumsum(n_int)[:-1]])
    int_local = np.arange(G) - np.repeat(first, n_int)
    ctx_pop = rng.dirichlet(np.full(C, 1.5))  # some categories are more common interests
    keys = rng.gumbel(size=(U, C)) + np.log(ctx_pop)[None, :]  # Gumbel top-k = weighted w/o repl.
    top = np.argsort(-keys, axis=1)
    int_ctx = top[int_user, int_local]
    csize = np.minimum(rng.integers(CLUSTER_MIN, CLUSTER_MAX + 1, G), sizes[int_ctx])
    draws = 4 * CLUSTER_MAX
    rep_ctx = np.repeat(int_ctx, draws)
    cand = members[rep_ctx, flat_rank(sizes[rep_ctx], rng.random(G * draws))].reshape(G, draws)
    cmax = int(csize.max())
    clusters = np.zeros((G, cmax), np.int64)
    clen = np.zeros(G, np.int64)
    for g in range(G):  # small per-interest dedup; G ~ 4 * users
        uniq = pd.unique(cand[g])[: csize[g]]
        if uniq.size < csize[g]:  # tiny categories: fill up from the whole category
            rest = members[int_ctx[g], : sizes[int_ctx[g]]]
            uniq = pd.unique(np.concatenate([uniq, rest]))[: csize[g]]
        clusters[g, : uniq.size] = uniq
        clen[g] = uniq.size
    cluster_table = _rank_table(1.0 / np.arange(1, cmax + 1, dtype=np.float64) ** 0.8)

    # ---- sessions and eras (per user, padded 2-D arrays [U, S]) ------------------------------
    S = int(E / (SESSION_MEAN * (1 - P_RECALL) + RECALL_MEAN * P_RECALL) * 1.6) + 8
    recall = rng.random((U, S)) < P_RECALL
    recall[:, 0] = False
    lens = np.where(recall, rng.geometric(1 / RECALL_MEAN, (U, S)),
                    rng.geometric(1 / SESSION_MEAN, (U, S)))
    lens[:, -1] = E  # guarantees each user's sessions cover E events
    sess_end = np.cumsum(lens, axis=1)  # exclusive end (in events) of each session
    era_len = int(np.clip(E / 8, ERA_MIN, ERA_MAX))
    # era boundaries per user: cumulative sums of era_len * U(0.6, 1.4), in events
    n_eras = E // max(1, int(era_len * 0.6)) + 2
    era_b = np.cumsum(rng.uniform(0.6, 1.4, (U, n_eras)) * era_len, axis=1)
    sess_start = sess_end - lens
    off = float(era_b.max()) + E + 1.0  # per-user offset: one searchsorted for all users
    flat_b = (era_b + off * np.arange(U)[:, None]).ravel()
    sess_era = (np.searchsorted(flat_b, (sess_start + off * np.arange(U)[:, None]).ravel(),
                                side="right").reshape(U, S) - n_eras * np.arange(U)[:, None])
    sess_era = np.minimum(sess_era, n_eras - 1)
    # era -> primary interest: reshuffled rounds over the user's interests, no immediate repeat
    rounds = n_eras + 1
    era_int = np.zeros((U, n_eras), np.int64)
    order = np.argsort(rng.random((U, rounds, MAX_INTERESTS)) +
                       (np.arange(MAX_INTERESTS)[None, None, :] >= n_int[:, None, None]), axis=2)
    for u in range(U):  # cheap: a few dozen entries per user
        k = n_int[u]
        s = order[u, :, :k].ravel()
        dup = np.flatnonzero(s[1:] == s[:-1]) + 1
        for d in dup:  # swap with the next entry to avoid the same interest twice in a row
            if d + 1 < s.size:
                s[d], s[d + 1] = s[d + 1], s[d]
        era_int[u] = s[:n_eras]
    prim = np.take_along_axis(era_int, sess_era, axis=1)
    k_u = n_int[:, None]
    shift = 1 + (rng.random((U, S)) * np.maximum(k_u - 1, 1)).astype(np.int64)
    other = np.where(k_u > 1, (prim + shift) % k_u, prim)
    sess_int_local = np.where(recall, other, prim)  # [U, S]

    # ---- events: flat arrays of U * E, user-major ----------------------------------------
    clipped_end = np.minimum(sess_end, E)
    clipped_len = np.diff(clipped_end, axis=1, prepend=0)
    reps = clipped_len.ravel()
    sess_flat = np.repeat(np.arange(U * S, dtype=np.int64), reps)  # u * S + s, per event
    ev_user = np.repeat(np.arange(U, dtype=np.int64), E)
    g_of = np.repeat((first[:, None] + sess_int_local).ravel(), reps)  # global interest id

    kind = rng.random(U * E)
    pref = kind < P_PREFERRED
    explore = kind >= 1 - P_EXPLORE
    item_idx = np.empty(U * E, np.int64)
    # preferred-cluster draws
    pi = np.flatnonzero(pref)
    gp = g_of[pi]
    rank = cluster_table[clen[gp] * RANK_Q + rng.integers(0, RANK_Q, pi.size)]
    item_idx[pi] = clusters.ravel()[gp * cmax + rank]
    # context-popularity draws (own interest's context, or a random one when exploring)
    ci = np.flatnonzero(~pref)
    ctx = int_ctx[g_of[ci]]
    ex = explore[ci]
    ctx[ex] = rng.integers(0, C, int(ex.sum()))
    item_idx[ci] = members[ctx, pop_rank(sizes[ctx], rng.random(ci.size))]

    # timestamps: strictly increasing per user
    new_sess = np.empty(U * E, bool)
    new_sess[0] = True
    np.not_equal(sess_flat[1:], sess_flat[:-1], out=new_sess[1:])
    # 5-120 s inside sessions, ~8 h between them; both shrink for very long histories so that
    # a user's whole span stays within ~MAX_SPAN_S (timestamps must not reach the future)
    within_hi = int(np.clip(MAX_SPAN_S / E, 2, 120))
    gap_mean = min(8 * 3600.0, MAX_SPAN_S / 2 / max(E / SESSION_MEAN, 1.0))
    step = rng.integers(min(5, within_hi - 1), within_hi + 1, U * E)
    n_new = int(new_sess.sum())
    step[new_sess] = 60 + rng.exponential(gap_mean, n_new).astype(np.int64)
    user_start = np.arange(0, U * E, E)
    step[user_start] = rng.integers(0, 30 * 86400, U)
    ts = np.cumsum(step)
    ts -= np.repeat(ts[user_start] - step[user_start], E)  # restart the running sum per user
    ts += START_TS

    like = rng.random(U * E) < np.where(pref, 0.15, 0.05)
    action = pd.Categorical.from_codes(like.view(np.int8),
                                       dtype=pd.CategoricalDtype(["click", "like"]), validate=False)

    # user-major rows (by user, then time) like MovieLens; the loader sorts by timestamp
    events = pd.DataFrame({"user_id": ev_user, "item_id": item_ids(N)[item_idx], "timestamp": ts,
                           "action": action}, copy=False)
    names = np.array(context_names(C), dtype=object)
    ids = item_ids(N)
    items_df = pd.DataFrame({"item_id": ids, "category": names[item_ctx]})
    truth = pd.DataFrame({
        "user_id": int_user.astype(np.int64),
        "interest": int_local.astype(np.int64),
        "category": names[int_ctx],
        "items": [tuple(ids[clusters[g, : clen[g]]].tolist()) for g in range(G)],
    })
    return SynthData(events, items_df, truth)


def generate(users: int, events_per_user: int, items: int, contexts: int,
             seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic ``(events, items)``: events ``user_id, item_id, timestamp`` (seconds),
    ``action`` in {click, like}, rows by user id then time (not globally by time); items
    ``item_id, category``. Same arguments -> identical frames. See the module docstring."""
    d = generate_with_truth(users, events_per_user, items, contexts, seed)
    return d.events, d.items


def items_path_for(out: Path | str) -> Path:
    """``events.csv`` -> ``events.items.csv`` (same folder, ``<stem>.items.csv``): the
    convention :func:`longretriever.data.events.items_next_to` finds the table by."""
    return items_next_to(out)


def write(out: Path | str, users: int, events_per_user: int, items: int, contexts: int,
          seed: int) -> tuple[Path, Path]:
    """Generate and write ``out`` (events CSV, header ``user_id,item_id,timestamp,action``) and
    ``<out stem>.items.csv`` next to it (header ``item_id,category``). Returns both paths;
    they load with ``longretriever.data.events.load_dataset(events, items)``."""
    out = Path(out)
    events, items_df = generate(users, events_per_user, items, contexts, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    items_out = items_path_for(out)
    events.to_csv(out, index=False, columns=["user_id", "item_id", "timestamp", "action"],
                  chunksize=1_000_000)
    items_df.to_csv(items_out, index=False, columns=["item_id", "category"])
    return out, items_out
