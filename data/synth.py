"""Seeded synthetic event logs where a long history matters, with the generator's own
predictive probabilities (the *oracle*) for any position, so every synthetic result can be
read against a ceiling.

The generative model (one ``numpy.random.default_rng(seed)``, fully deterministic):

* **Items** ``item_id = 1000 + 7 * i`` (deliberately not dense) in ``contexts`` categories named
  ``c00, c01, ...`` of Dirichlet-varying sizes. Each item has a latent vector ``v_i`` in
  ``R^LATENT_DIM`` (unit norm) and a popularity bias ``b_i = -POP_SKEW * log(rank)`` by a
  random popularity rank inside its category (popularity skew).
* **Interests**: each user has 2-6 long-lived interests, each a distinct category (common
  categories are more likely), a weight, and a **taste** ``t_g`` (unit vector) that drifts a
  little at every era change (``DRIFT``). Inside an interest the next item is drawn with
  ``P(i | g) ∝ exp(TASTE * t_g . v_i + b_i)`` over the category's items the user has **not
  consumed yet** (no re-consumption: Plackett-Luce without replacement).
* **Eras and sessions**: the history is cut into eras (about ``events / 8`` events, between
  ``ERA_MIN`` and ``ERA_MAX``); each era has a primary interest, cycling through the user's
  interests in reshuffled rounds, so an interest goes dormant for whole eras (thousands of
  events for long histories) and comes back with (almost) the same taste. Sessions have
  geometric lengths (mean ``SESSION_MEAN``); a session goes to the era's primary interest,
  except a *recall* session (probability ``P_RECALL``, mean ``RECALL_MEAN`` events) which goes
  to another interest (by weight).
* **Exploration**: with probability ``P_EXPLORE`` an event is a popular item of a random
  category (by popularity only), outside the session's interest.
* **Timestamps** (seconds) strictly increase per user from 2015-01-01 UTC plus up to 30 days;
  5-120 s inside a session, ~8 h between sessions, scaled down for very long histories so a
  history spans at most ~4 years. ``action`` is ``like`` or ``click``.

A user who has consumed (almost) the whole catalogue -- only when ``events_per_user``
approaches ``items`` -- goes on re-consuming inside its interests; sets meant for evaluation
keep ``events_per_user`` well below ``items`` (the oracle gives a re-consumed item 0).

Event counts per user are ``events_per_user``, or log-uniform in ``[min_events, events_per_user]``
when ``min_events`` is given (for results by history length).

**Oracle** (:func:`oracle_scores`): for a user's position ``t`` the generator knows the latent
state after event ``t-1`` (the interest and kind of the running session, the era schedule, the
current tastes, what was consumed). The next event continues the session with probability
``1 - 1/mean`` or starts a new one (era primary / recall); it explores with ``P_EXPLORE``. The
oracle's probability of item ``i`` is that mixture, over items not consumed before ``t``.
Ranking the unseen items by it, under the evaluator's own protocol, is the ceiling.

Files written by :func:`write`: the events CSV ``out`` (``user_id,item_id,timestamp,action``),
``<stem>.items.csv`` (``item_id,category``) and ``<stem>.truth.npz`` (what the oracle needs).
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
LATENT_DIM = 8
TASTE = 3.0  # sharpness of a taste over its category's items
POP_SKEW = 0.6  # popularity bias per log-rank inside a category
DRIFT = 0.25  # taste random-walk step at every era change
MIN_INTERESTS, MAX_INTERESTS = 2, 6
SESSION_MEAN = 20.0
RECALL_MEAN = 5.0
P_RECALL = 0.06  # share of sessions that revisit a non-primary interest
P_EXPLORE = 0.03
ERA_MIN, ERA_MAX = 40, 2500
MAX_SPAN_S = 4 * 365 * 86400
EXPLORE = -1  # interest label of an exploration event
EXPLORE_TOP = 20  # exploration picks among a category's most popular items not consumed yet
SATURATED = 20  # an interest moves to a new category when fewer unconsumed items remain (or 10 %)


@dataclass(frozen=True)
class Truth:
    """What the generator knows; enough to compute :func:`oracle_scores` for any position."""

    item_ids: np.ndarray  # int64 [N]
    item_ctx: np.ndarray  # int64 [N] category index
    item_vec: np.ndarray  # float64 [N, D]
    item_bias: np.ndarray  # float64 [N]
    user_ids: np.ndarray  # int64 [U]
    int_offset: np.ndarray  # int64 [U + 1]: user u's interests are rows int_offset[u]:int_offset[u+1]
    int_ctx: np.ndarray  # int64 [G] first category of each interest
    int_weight: np.ndarray  # float64 [G] (sums to 1 per user)
    ctx_pop: np.ndarray  # float64 [C] how likely each category is to be explored (and an interest)
    block_ctx: np.ndarray  # int64 [R] category of each interest, one block of k rows per (user, era, change)
    taste: np.ndarray  # float64 [R, D] taste of each interest, same rows
    ev_offset: np.ndarray  # int64 [U + 1]: user u's events are rows ev_offset[u]:ev_offset[u+1]
    ev_item: np.ndarray  # int64 [E] item index per event (generation = canonical order)
    ev_interest: np.ndarray  # int8 [E] local interest of the event's session (EXPLORE: exploration)
    ev_session_interest: np.ndarray  # int8 [E] local interest of the session the event belongs to
    ev_recall: np.ndarray  # bool [E] the event's session is a recall session
    ev_era_primary: np.ndarray  # int8 [E] the primary interest of the era that position lies in
    ev_block: np.ndarray  # int64 [E] first row of the interest block the event was drawn with

    def save(self, path: Path | str) -> None:
        np.savez_compressed(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path | str) -> "Truth":
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SynthData:
    events: pd.DataFrame  # user_id, item_id, timestamp (s), action
    items: pd.DataFrame  # item_id, category
    truth: Truth


def item_ids(items: int) -> np.ndarray:
    return ITEM_BASE + ITEM_STRIDE * np.arange(items, dtype=np.int64)


def context_names(contexts: int) -> list[str]:
    width = max(2, len(str(contexts - 1)))
    return [f"c{i:0{width}d}" for i in range(contexts)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _era_primaries(rng: np.random.Generator, k: int, n_eras: int) -> np.ndarray:
    """Reshuffled rounds over ``k`` interests, never the same interest twice in a row."""
    out: list[int] = []
    while len(out) < n_eras:
        r = rng.permutation(k).tolist()
        if out and k > 1 and r[0] == out[-1]:
            r[0], r[-1] = r[-1], r[0]
        out += r
    return np.asarray(out[:n_eras], np.int64)


def _plackett_order(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """A consumption order: a Plackett-Luce sample without replacement (Gumbel top-all)."""
    return np.argsort(-(logits + rng.gumbel(size=logits.size)), kind="stable")


def generate_with_truth(users: int, events_per_user: int, items: int, contexts: int, seed: int,
                        min_events: int | None = None, drift: float = DRIFT) -> SynthData:
    """Events, items and the generator's truth (see the module docstring). ``drift`` is the
    taste random-walk step at every era change (0: every interest keeps one taste for life)."""
    if users < 1 or events_per_user < 1:
        raise ConfigError(f"users and events per user must be >= 1, got {users} and {events_per_user}")
    if contexts < 1 or items < contexts:
        raise ConfigError(f"need contexts >= 1 and items >= contexts (every category non-empty), "
                          f"got {contexts} contexts and {items} items")
    if min_events is not None and not 1 <= min_events <= events_per_user:
        raise ConfigError(f"min events per user must be in [1, events per user], got {min_events}")
    if not 0.0 <= drift <= 10.0:
        raise ConfigError(f"drift must be in [0, 10], got {drift}")
    rng = np.random.default_rng(seed)
    U, N, C = int(users), int(items), int(contexts)

    # ---- items --------------------------------------------------------------------------
    sizes = 1 + rng.multinomial(N - C, rng.dirichlet(np.full(C, 2.0)))
    item_ctx = np.empty(N, np.int64)
    item_ctx[rng.permutation(N)] = np.repeat(np.arange(C), sizes)
    members = [np.flatnonzero(item_ctx == c) for c in range(C)]
    vec = _unit(rng.standard_normal((N, LATENT_DIM)))
    bias = np.empty(N)
    for c in range(C):
        rank = rng.permutation(members[c].size) + 1
        bias[members[c]] = -POP_SKEW * np.log(rank)
    ctx_pop = rng.dirichlet(np.full(C, 1.5))

    # ---- users ----------------------------------------------------------------------------
    if min_events is None:
        lengths = np.full(U, int(events_per_user), np.int64)
    else:
        lo, hi = np.log(min_events), np.log(events_per_user)
        lengths = np.exp(rng.uniform(lo, hi, U)).round().astype(np.int64).clip(min_events, events_per_user)
    n_int = np.minimum(rng.integers(MIN_INTERESTS, MAX_INTERESTS + 1, U), C)
    int_offset = np.concatenate([[0], np.cumsum(n_int)]).astype(np.int64)
    ev_offset = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    G, E = int(int_offset[-1]), int(ev_offset[-1])
    int_ctx = np.empty(G, np.int64)
    int_weight = np.empty(G)
    blk_ctx: list[np.ndarray] = []
    blk_taste: list[np.ndarray] = []
    n_rows = 0
    ev_block = np.empty(E, np.int64)
    ev_item = np.empty(E, np.int64)
    ev_int = np.empty(E, np.int8)
    ev_sess = np.empty(E, np.int8)
    ev_recall = np.empty(E, bool)
    ev_prim = np.empty(E, np.int8)
    pop_order = [members[c][np.argsort(-bias[members[c]], kind="stable")] for c in range(C)]

    for u in range(U):
        L, k = int(lengths[u]), int(n_int[u])
        ctxs = np.argsort(-(rng.gumbel(size=C) + np.log(ctx_pop)))[:k]  # weighted, distinct
        int_ctx[int(int_offset[u]):int(int_offset[u + 1])] = ctxs
        int_weight[int(int_offset[u]):int(int_offset[u + 1])] = w = rng.dirichlet(np.full(k, 2.0))
        taste = _unit(rng.standard_normal((k, LATENT_DIM)))
        era_len = int(np.clip(L / 8, ERA_MIN, ERA_MAX))
        bounds = np.cumsum(rng.uniform(0.6, 1.4, L // max(1, int(era_len * 0.6)) + 2) * era_len).astype(np.int64)
        prim = _era_primaries(rng, k, bounds.size + 1)
        consumed = np.zeros(N, bool)
        free = np.array([members[c].size for c in range(C)], np.int64)  # unconsumed items per category
        orders: list[np.ndarray] = [np.zeros(0, np.int64)] * k
        cursor = [0] * k
        block = -1

        def new_block() -> int:
            """Record the user's current interests (category + taste per slot) as rows."""
            nonlocal n_rows
            blk_ctx.append(ctxs.copy())
            blk_taste.append(taste.copy())
            n_rows += k
            return n_rows - k

        def redraw(g: int) -> None:
            m = members[ctxs[g]]
            rest = m[~consumed[m]]
            logits = TASTE * (vec[rest] @ taste[g]) + bias[rest]
            orders[g] = rest[_plackett_order(rng, logits)]
            cursor[g] = 0

        def next_item(g: int) -> int:
            nonlocal block
            c = ctxs[g]
            if free[c] <= max(SATURATED, members[c].size // 10):  # the category is used up:
                held = set(ctxs.tolist())  # the interest moves on to a new category
                options = [x for x in np.argsort(-(rng.gumbel(size=C) + np.log(ctx_pop))).tolist()
                           if x not in held and free[x] > max(SATURATED, members[x].size // 10)]
                if options:
                    ctxs[g] = options[0]
                    taste[g] = _unit(rng.standard_normal(LATENT_DIM))
                    block = new_block()
                    redraw(g)
            o, p = orders[g], cursor[g]
            while p < o.size and consumed[o[p]]:
                p += 1
            cursor[g] = p
            if p < o.size:
                return int(o[p])
            redraw(g)  # every item of the order was consumed (only when no category is left)
            o = orders[g]
            return int(o[0]) if o.size else int(rng.choice(members[ctxs[g]]))

        era = -1
        pos = 0
        base = int(ev_offset[u])
        while pos < L:
            e_now = int(np.searchsorted(bounds, pos, side="right"))
            if e_now != era:  # a new era: tastes drift, consumption orders are redrawn
                if era >= 0:
                    taste = _unit(taste + drift * rng.standard_normal(taste.shape))
                era = e_now
                block = new_block()
                for g in range(k):
                    redraw(g)
            p_g = int(prim[era])
            recall = k > 1 and rng.random() < P_RECALL
            if recall:
                others = [g for g in range(k) if g != p_g]
                ww = w[others] / w[others].sum()
                g_s = int(others[int(rng.choice(len(others), p=ww))])
                n = int(rng.geometric(1 / RECALL_MEAN))
            else:
                g_s, n = p_g, int(rng.geometric(1 / SESSION_MEAN))
            n = min(n, L - pos)
            for _ in range(n):
                i = base + pos
                ev_block[i] = block  # the interests in force when the event is drawn
                if rng.random() < P_EXPLORE and (free > 0).any():  # a category with items left, by ctx_pop
                    pc = np.where(free > 0, ctx_pop, 0.0)
                    c = int(rng.choice(C, p=pc / pc.sum()))
                    cand = pop_order[c]
                    item = int(rng.choice(cand[~consumed[cand]][:EXPLORE_TOP]))
                    ev_int[i] = EXPLORE
                else:
                    item = next_item(g_s)
                    ev_block[i] = block  # next_item may have moved an interest on
                    ev_int[i] = g_s
                if not consumed[item]:
                    consumed[item] = True
                    free[item_ctx[item]] -= 1
                ev_item[i], ev_sess[i], ev_recall[i] = item, g_s, recall
                ev_prim[i] = prim[int(np.searchsorted(bounds, pos, side="right"))]
                pos += 1

    # ---- timestamps and actions (vectorised) ----------------------------------------------
    ev_user = np.repeat(np.arange(U, dtype=np.int64), lengths)
    new_sess = np.ones(E, bool)
    same_user = np.concatenate([[False], ev_user[1:] == ev_user[:-1]])
    new_sess[1:] = ~same_user[1:] | (ev_sess[1:] != ev_sess[:-1]) | (ev_recall[1:] != ev_recall[:-1])
    within_hi = np.clip(MAX_SPAN_S // np.maximum(lengths, 1), 2, 120)[ev_user]
    gap_mean = np.minimum(8 * 3600.0, MAX_SPAN_S / 2 / np.maximum(lengths / SESSION_MEAN, 1.0))[ev_user]
    step = rng.integers(np.minimum(5, within_hi - 1), within_hi + 1)
    step = np.where(new_sess, 60 + rng.exponential(gap_mean).astype(np.int64), step)
    first = ev_offset[:-1]
    step[first] = rng.integers(0, 30 * 86400, U)
    ts = np.cumsum(step)
    ts -= np.repeat(ts[first] - step[first], lengths)
    ts += START_TS
    like = rng.random(E) < np.where(ev_int >= 0, 0.15, 0.05)
    action = pd.Categorical.from_codes(like.view(np.int8), dtype=pd.CategoricalDtype(["click", "like"]),
                                       validate=False)
    ids = item_ids(N)
    events = pd.DataFrame({"user_id": ev_user, "item_id": ids[ev_item], "timestamp": ts, "action": action},
                          copy=False)
    names = np.array(context_names(C), dtype=object)
    items_df = pd.DataFrame({"item_id": ids, "category": names[item_ctx]})
    truth = Truth(ids, item_ctx, vec, bias, np.arange(U, dtype=np.int64), int_offset, int_ctx, int_weight,
                  ctx_pop, np.concatenate(blk_ctx), np.concatenate(blk_taste), ev_offset, ev_item, ev_int, ev_sess,
                  ev_recall, ev_prim, ev_block)
    return SynthData(events, items_df, truth)


def oracle_scores(truth: Truth, user_index: int, t: int) -> np.ndarray:
    """float64 [N]: the generator's probability that event ``t`` of user ``user_index`` (its
    position in generation order, ``t >= 1``) is each item, given the latent state after event
    ``t - 1``: the running session (interest, kind, tastes), the era schedule, what was
    consumed. Items consumed before ``t`` get probability 0. (A taste drift drawn exactly at
    ``t`` by a new era is not anticipated: the running tastes are used for every branch.)"""
    u = int(user_index)
    base, end = int(truth.ev_offset[u]), int(truth.ev_offset[u + 1])
    if not 1 <= t < end - base:
        raise ValueError(f"position {t} outside 1..{end - base - 1}")
    lo, hi = int(truth.int_offset[u]), int(truth.int_offset[u + 1])
    k = hi - lo
    consumed = np.zeros(truth.item_ids.size, bool)
    consumed[truth.ev_item[base:base + t]] = True
    prev = base + t - 1
    g_prev = int(truth.ev_session_interest[prev])
    p_cont = 1.0 - 1.0 / (RECALL_MEAN if truth.ev_recall[prev] else SESSION_MEAN)
    prim = int(truth.ev_era_primary[base + t])
    w = truth.int_weight[lo:hi]
    p_int = np.zeros(k)
    p_int[g_prev] += p_cont
    if k > 1:  # a new session: the era's primary, or a recall session to another interest
        p_int[prim] += (1 - p_cont) * (1 - P_RECALL)
        others = np.array([g for g in range(k) if g != prim])
        p_int[others] += (1 - p_cont) * P_RECALL * w[others] / w[others].sum()
    else:
        p_int[0] += 1 - p_cont
    row = int(truth.ev_block[prev])
    tastes, cats = truth.taste[row:row + k], truth.block_ctx[row:row + k]
    out = np.zeros(truth.item_ids.size)
    for g in range(k):
        m = np.flatnonzero(truth.item_ctx == cats[g])
        m = m[~consumed[m]]
        if m.size == 0 or p_int[g] == 0:
            continue
        logits = TASTE * (truth.item_vec[m] @ tastes[g]) + truth.item_bias[m]
        p = np.exp(logits - logits.max())
        out[m] += (1 - P_EXPLORE) * p_int[g] * p / p.sum()
    # exploration: a category with items left, by ctx_pop; one of its most popular free items
    tops = []
    for c in range(truth.ctx_pop.size):
        m = np.flatnonzero(truth.item_ctx == c)
        m = m[np.argsort(-truth.item_bias[m], kind="stable")]
        tops.append(m[~consumed[m]][:EXPLORE_TOP])
    pc = np.array([truth.ctx_pop[c] if tops[c].size else 0.0 for c in range(len(tops))])
    for c, top in enumerate(tops):
        if top.size:
            out[top] += P_EXPLORE * pc[c] / pc.sum() / top.size
    return out


def generate(users: int, events_per_user: int, items: int, contexts: int, seed: int,
             min_events: int | None = None, drift: float = DRIFT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic ``(events, items)``: events ``user_id, item_id, timestamp`` (seconds),
    ``action`` in {click, like}, rows by user id then time (not globally by time); items
    ``item_id, category``. Same arguments -> identical frames. See the module docstring."""
    d = generate_with_truth(users, events_per_user, items, contexts, seed, min_events, drift)
    return d.events, d.items


def items_path_for(out: Path | str) -> Path:
    """``events.csv`` -> ``events.items.csv`` (same folder, ``<stem>.items.csv``): the
    convention :func:`longretriever.data.events.items_next_to` finds the table by."""
    return items_next_to(out)


def truth_path_for(out: Path | str) -> Path:
    """``events.csv`` -> ``events.truth.npz``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.truth.npz")


def write(out: Path | str, users: int, events_per_user: int, items: int, contexts: int,
          seed: int, min_events: int | None = None, drift: float = DRIFT) -> tuple[Path, Path]:
    """Generate and write ``out`` (events CSV, header ``user_id,item_id,timestamp,action``),
    ``<out stem>.items.csv`` (header ``item_id,category``) and ``<out stem>.truth.npz``.
    Returns (events, items); they load with ``longretriever.data.events.load_dataset``."""
    out = Path(out)
    d = generate_with_truth(users, events_per_user, items, contexts, seed, min_events, drift)
    out.parent.mkdir(parents=True, exist_ok=True)
    items_out = items_path_for(out)
    d.events.to_csv(out, index=False, columns=["user_id", "item_id", "timestamp", "action"], chunksize=1_000_000)
    d.items.to_csv(items_out, index=False, columns=["item_id", "category"])
    d.truth.save(truth_path_for(out))
    return out, items_out
