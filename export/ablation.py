"""Ablation of LongRetriever's parts under the evaluator's protocol.

Each variant changes one training setting of the full model (``TrainConfig``), is trained per
seed exactly like ``longretriever eval`` trains LongRetriever (same epochs, validation epoch
choice) and scored on the test targets. Serving-side parts need no retraining, so every
trained model is also scored with the learned context choice and with fewer contexts (M):

* ``K=0`` -- no hard search: a context vector sees only its context id and the recent window;
* ``K=32`` -- a short hard search;
* ``W=0`` -- no recent cross-context window;
* ``seen items as negatives`` -- the in-context softmax keeps the items the user consumed
  before the target (serving excludes them; this row trains as if it did not);
* ``W=64`` -- a longer recent window (sensitivity, not a removal);
* ``per-context PPMI init only`` / ``global PPMI init only`` -- one half of the default
  ``ppmi_mix`` item initialisation (``export.pretrain``) over all the dimensions;
* ``no co-occurrence init`` -- item embeddings from a random start instead of the PPMI-SVD
  vectors;
* ``frequency choice`` / ``M=1`` / ``M=4`` -- the full model served differently.

Every LongRetriever row is served with the learned next-context predictor choosing M=8
contexts (what ``eval`` picks on validation on every set measured), unless the row says otherwise;
* ``sasrec (N=50, reference)`` -- the single-vector baseline, trained in the same run.

``exclude_seen=False`` scores every item, seen ones included (a repeat-consumption protocol:
the target may be an item the user already had), for every row alike.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from longretriever.export.context_predictor_train import train_context_predictor
from longretriever.export.baselines import train_sasrec
from longretriever.export.evaluate import (eval_longretriever, eval_sasrec, make_cases, mean_metrics, plan_cases,
                             quartiles, rank_metrics)
from longretriever.export.device import default_threads
from longretriever.export.parallel import parallel_map
from longretriever.export.train import Split, TrainConfig, make_split, train_longretriever
from longretriever.data.events import Dataset

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "K=0 (no hard search)": {"k": 0},
    "K=32": {"k": 32},
    "W=0 (no recent window)": {"w": 0},
    "seen items as negatives": {"exclude_seen": False},
    "W=64 (longer recent window)": {"w": 64},
    "per-context PPMI init only": {"pretrain": "ppmi"},
    "global PPMI init only": {"pretrain": "ppmi_global"},
    "no co-occurrence init": {"pretrain": "none"},
}
SERVING = {"frequency choice": ("frequency", 8), "M=1": ("learned", 1), "M=4": ("learned", 4)}
SHOWN = ("hr@10", "recall@50", "recall@100", "recall@200", "recall@100 Q4")
SASREC = "sasrec (N=50, reference)"


def _scored(split, cases, rows) -> dict[str, float]:
    m = mean_metrics(rows)
    m["recall@100 Q4"] = quartiles(split, cases, rows)[3]["recall@100"]
    return m


def _job(args) -> dict[str, Any]:
    split, cfg, name, predictor, exclude_seen = args
    import torch

    torch.set_num_threads(max(1, cfg.threads or default_threads()))
    val, test = make_cases(split, "val"), make_cases(split, "test")
    t0 = time.perf_counter()
    out: dict[str, Any] = {"variant": name, "seed": cfg.seed, "config": cfg.to_dict()}
    if name == SASREC:
        res = train_sasrec(split, cfg, 50, lambda m: mean_metrics(rank_metrics(
            eval_sasrec(m, split, val, exclude_seen)))["recall@100"], progress=False)
        out.update(seconds=time.perf_counter() - t0, val_curve=res.val_curve,
                   test={name: _scored(split, test, rank_metrics(eval_sasrec(res.model, split, test, exclude_seen)))})
        return out
    lp_val = plan_cases(split, val, cfg.k, cfg.w, scorer=predictor, exclude_seen=exclude_seen)
    cfg = cfg.serving(exclude_seen)  # train as the protocol serves
    res = train_longretriever(split, cfg, lambda m: mean_metrics(
        eval_longretriever(m, split, val, lp_val))["recall@100"], progress=False)
    lp_test = plan_cases(split, test, cfg.k, cfg.w, scorer=predictor, exclude_seen=exclude_seen)
    out.update(model=res.model.cfg.to_dict(), seconds=time.perf_counter() - t0, val_curve=res.val_curve,
               test={name: _scored(split, test, eval_longretriever(res.model, split, test, lp_test))})
    if name == "full":
        for sname, (choice, m) in SERVING.items():
            lp = plan_cases(split, test, cfg.k, cfg.w, m, scorer=predictor if choice == "learned" else None,
                            exclude_seen=exclude_seen)
            out["test"][sname] = _scored(split, test, eval_longretriever(res.model, split, test, lp))
    return out


def run_ablation(ds: Dataset, out_dir: Path, cfg: TrainConfig, seeds: int = 1, jobs: int = 2,
                 variants: dict[str, dict[str, Any]] | None = None, exclude_seen: bool = True,
                 reference: bool = True) -> dict[str, Any]:
    variants = dict(VARIANTS if variants is None else variants)
    if reference:
        variants[SASREC] = {}
    split: Split = make_split(ds)
    predictor, _ = train_context_predictor(split)
    threads = cfg.threads or default_threads(min(jobs, len(variants) * seeds))
    args = [(split, replace(cfg, seed=cfg.seed + s, threads=threads, **kw), name, predictor, exclude_seen)
            for name, kw in variants.items() for s in range(seeds)]
    t0 = time.perf_counter()
    runs = parallel_map(_job, args, jobs)
    rows: dict[str, list[dict[str, float]]] = {}
    for r in runs:
        for name, m in r["test"].items():
            rows.setdefault(name, []).append(m)
    summary = {name: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]} for name, ms in rows.items()}
    for name in variants:  # best validation recall@100 of each retrained variant
        curves = [max(r["val_curve"]) for r in runs if r["variant"] == name and r["val_curve"]]
        if curves and name in summary:
            summary[name]["val_recall@100"] = float(np.mean(curves))
    result = {"dataset": ds.name, "seeds": [cfg.seed + s for s in range(seeds)], "config": cfg.to_dict(),
              "exclude_seen": exclude_seen,
              "wall_seconds": time.perf_counter() - t0, "summary": summary, "runs": runs}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps(result, indent=1, default=float))
    full = summary.get("full")
    seen = "seen items excluded" if exclude_seen else "seen items included (repeat consumption)"
    lines = [f"# Ablation: {ds.name}", "", f"Seeds {result['seeds']}; test targets, leave-last-out, "
             f"full-corpus ranking, {seen}; each variant retrained (epoch chosen on validation "
             "recall@100); serving variants reuse the full model. Q4 = the quarter of users with "
             "the longest histories.", "",
             "| variant | val recall@100 | " + " | ".join(SHOWN) + " | recall@100 vs full |",
             "|---" * (len(SHOWN) + 3) + "|"]
    for name, m in summary.items():
        rel = f"{m['recall@100'] / full['recall@100']:.3f}x" if full and full["recall@100"] > 0 else "-"
        v = f"{m['val_recall@100']:.4f}" if "val_recall@100" in m else "(full model)"
        lines.append(f"| {name} | {v} | " + " | ".join(f"{m[k]:.4f}" for k in SHOWN) + f" | {rel} |")
    (out_dir / "ablation.md").write_text("\n".join(lines) + "\n")
    return result
