"""Training of the learned next-context predictor (:mod:`longretriever.core.context_predictor`).

Examples are the same leave-last-out training positions as the encoder's: for target position
``t`` of a user, the features of the contexts of events ``< t`` (the newest ``window``) and the
label ``context(items[t])``. Features come from the one pure function serving uses. The model
is a multinomial logistic regression fitted by full-batch L-BFGS (deterministic) with an L2
penalty; the penalty is picked on the validation targets (second-to-last events) by log loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longretriever.export.train import Split
from longretriever.core.context_predictor import DEFAULT_TAUS, ContextPredictor, predictor_features
from longretriever.core.multicontext import DEFAULT_WINDOW, choice_weights, choose_contexts

L2_GRID = (1e-3, 1e-2)


@dataclass
class ContextExamples:
    x: np.ndarray  # float64 [n, F]
    y: np.ndarray  # int64 [n] next context
    histories: list[np.ndarray]  # context sequences (newest ``window``), for baselines


def context_examples(split: Split, which: str, taus=DEFAULT_TAUS, window: int = DEFAULT_WINDOW,
                     max_per_user: int = 0, seed: int = 0) -> ContextExamples:
    """``which``: "train" (training positions; up to ``max_per_user`` per user, 0 = all),
    "val" (second-to-last event) or "test" (last event)."""
    rng = np.random.default_rng(seed)
    c = split.table.num_contexts
    xs, ys, hs = [], [], []
    for u in split.users:
        n = len(u)
        if which == "train":
            lo, hi = split.train_range(u)
            pos = np.arange(lo, hi)
            if 0 < max_per_user < pos.size:
                pos = np.sort(rng.choice(pos, max_per_user, replace=False))
        elif n >= 3:
            pos = np.array([n - (2 if which == "val" else 1)])
        else:
            continue
        for t in pos.tolist():
            hist = u.contexts[max(0, t - window):t]
            xs.append(predictor_features(hist, c, taus, window))
            ys.append(int(u.contexts[t]))
            hs.append(hist)
    f = 2 * len(taus) * c
    x = np.stack(xs) if xs else np.zeros((0, f))
    return ContextExamples(x, np.asarray(ys, np.int64), hs)


def _fit(x: torch.Tensor, y: torch.Tensor, c: int, l2: float, iters: int) -> torch.nn.Linear:
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], c, dtype=torch.float64)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def log_loss(p: ContextPredictor, ex: ContextExamples) -> float:
    """Mean cross-entropy of ``p`` on ``ex`` (the training loss, without the penalty)."""
    if ex.y.size == 0:
        return float("nan")
    logits = torch.as_tensor(ex.x @ p.weight + p.bias)
    return float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(ex.y)))


def coverage(scorer: ContextPredictor | None, ex: ContextExamples, m: int) -> float:
    """Share of examples whose true next context is among the ``m`` contexts chosen by
    ``choice_weights`` (``scorer`` None = recency-weighted frequency)."""
    if ex.y.size == 0:
        return float("nan")
    hit = [y in {c for c, _ in choose_contexts(choice_weights(h, scorer), m)}
           for h, y in zip(ex.histories, ex.y.tolist())]
    return float(np.mean(hit))


def train_context_predictor(split: Split, taus=DEFAULT_TAUS, window: int = DEFAULT_WINDOW,
                            max_per_user: int = 64, iters: int = 50,
                            seed: int = 0) -> tuple[ContextPredictor, dict]:
    """Fit on the training positions, choose the L2 penalty on validation log loss; returns
    the predictor and its metrics (log loss and top-1/top-8 coverage on validation, next to
    the recency-weighted-frequency choice)."""
    c = split.table.num_contexts
    tr = context_examples(split, "train", taus, window, max_per_user, seed)
    va = context_examples(split, "val", taus, window)
    x, y = torch.as_tensor(tr.x), torch.as_tensor(tr.y)
    best = None
    for l2 in L2_GRID:
        lin = _fit(x, y, c, l2, iters)
        p = ContextPredictor(lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy(),
                             tuple(float(t) for t in taus), window)
        ll = log_loss(p, va) if va.y.size else log_loss(p, tr)
        if best is None or ll < best[0]:
            best = (ll, l2, p)
    ll, l2, pred = best
    metrics = {"examples": int(tr.y.size), "l2": l2, "val_log_loss": ll,
               "val_top1": coverage(pred, va, 1), "val_top8": coverage(pred, va, 8),
               "val_top1_frequency": coverage(None, va, 1), "val_top8_frequency": coverage(None, va, 8)}
    return pred, metrics


def compare_choices(model, split: Split, cases, k: int, w: int, predictor: ContextPredictor,
                    max_contexts: int = 8, exclude_seen: bool = True) -> dict[str, dict[str, float]]:
    """Metrics of the trained model on ``cases`` under each context choice."""
    from longretriever.export.evaluate import eval_longretriever, mean_metrics, plan_cases

    out = {}
    for name, scorer in (("frequency", None), ("learned", predictor)):
        lp = plan_cases(split, cases, k, w, max_contexts, scorer=scorer, exclude_seen=exclude_seen)
        out[name] = mean_metrics(eval_longretriever(model, split, cases, lp))
    return out


def pick_choice(val_metrics: dict[str, dict[str, float]], metric: str = "recall@100") -> str:
    """The choice with the better validation ``metric``; a tie keeps the simpler frequency."""
    return "learned" if val_metrics["learned"][metric] > val_metrics["frequency"][metric] else "frequency"
