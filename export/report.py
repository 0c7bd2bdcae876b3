"""Run the full evaluation (all models x seeds) and write report.json, report.md and plots.

Every model gets the same budget: ``epochs`` passes of :func:`longretriever.export.train.fit` (Adam, same
lr, dim, batch size, temperature) and the epoch with the best validation recall@100 is kept.
SASRec is trained with N=50 and N=200 and, per seed, the variant with the better validation
recall@100 is reported. LongRetriever is scored under both context choices (recency-weighted
frequency and the learned next-context predictor, trained once per dataset); per seed the
choice with the better validation recall@100 is reported, as ``longretriever train
--context-choice auto`` does; both are listed in report.md.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from longretriever.export.baselines import train_multi_interest, train_sasrec
from longretriever.export.context_predictor_train import compare_choices, pick_choice, train_context_predictor
from longretriever.export.parallel import parallel_map
from longretriever.export.plots import write_plots
from longretriever.export.evaluate import (METRICS, eval_longretriever, eval_multi_interest,
                             eval_popularity, eval_sasrec, make_cases, mean_metrics, plan_cases,
                             quartiles, rank_metrics)
from longretriever.export.train import Split, TrainConfig, make_split, train_longretriever
from longretriever.data.events import Dataset

log = logging.getLogger(__name__)
MODELS = ("popularity", "sasrec", "multi_interest", "longretriever")
PROTOCOL = ("leave-last-out (last event = test, second-to-last = validation, rest = train); "
            "full-corpus ranking over all {n} items, seen items excluded; epoch chosen on "
            "validation recall@100; mean over seeds {seeds}")


def run_seed(split: Split, cfg: TrainConfig, progress: bool = False, predictor=None) -> dict[str, Any]:
    val, test = make_cases(split, "val"), make_cases(split, "test")
    lp_val = plan_cases(split, val, cfg.k, cfg.w)
    lp_test = plan_cases(split, test, cfg.k, cfg.w)
    r100 = lambda rows: mean_metrics(rows)["recall@100"]  # noqa: E731
    out: dict[str, Any] = {"models": {}, "quartiles": {}, "loss": {}, "val": {}, "seconds": {}, "notes": {}}

    def record(name: str, rows, res=None, t0=None):
        out["models"][name] = mean_metrics(rows)
        out["quartiles"][name] = quartiles(split, test, rows)
        if res is not None:
            out["loss"][name] = res.losses
            out["val"][name] = res.val_curve
        out["seconds"][name] = time.perf_counter() - t0 if t0 else 0.0

    t0 = time.perf_counter()
    record("popularity", rank_metrics(eval_popularity(split, test)), t0=t0)

    best = None
    for n in (50, 200):
        t0 = time.perf_counter()
        res = train_sasrec(split, cfg, n, lambda m: r100(rank_metrics(eval_sasrec(m, split, val))), progress)
        v = max(res.val_curve) if res.val_curve else 0.0
        out["notes"][f"sasrec{n}_val_recall@100"] = v
        if best is None or v > best[0]:
            best = (v, n, res, t0)
    _, n, res, t0 = best
    out["notes"]["sasrec_n"] = n
    record("sasrec", rank_metrics(eval_sasrec(res.model, split, test)), res, t0)

    t0 = time.perf_counter()
    res = train_multi_interest(split, cfg, 50, 4,
                               lambda m: r100(rank_metrics(eval_multi_interest(m, split, val))), progress)
    record("multi_interest", rank_metrics(eval_multi_interest(res.model, split, test)), res, t0)

    t0 = time.perf_counter()
    res = train_longretriever(split, cfg, lambda m: r100(eval_longretriever(m, split, val, lp_val)), progress)
    rows = {"frequency": eval_longretriever(res.model, split, test, lp_test)}
    choice = "frequency"
    if predictor is not None:
        val_by = compare_choices(res.model, split, val, cfg.k, cfg.w, predictor)
        lt = plan_cases(split, test, cfg.k, cfg.w, scorer=predictor)
        rows["learned"] = eval_longretriever(res.model, split, test, lt)
        choice = pick_choice(val_by)
        out["notes"]["context_choice_val"] = {c: m["recall@100"] for c, m in val_by.items()}
    out["notes"]["context_choice"] = choice
    out["by_choice"] = {c: mean_metrics(r) for c, r in rows.items()}
    record("longretriever", rows[choice], res, t0)
    out["lr_model"] = res.model
    return out


def _seed_job(args) -> dict[str, Any]:
    """One seed (in a worker process when parallel): results only, the model stays behind."""
    split, cfg, predictor, progress = args
    import torch

    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.perf_counter()
    r = run_seed(split, cfg, progress, predictor)
    r.pop("lr_model", None)
    r["seed_seconds"] = time.perf_counter() - t0
    return r


def run_seeds(split: Split, cfg: TrainConfig, seeds: int, progress: bool, predictor,
              jobs: int = 1) -> list[dict[str, Any]]:
    """Every seed's results, in seed order; ``jobs > 1`` runs seeds in parallel processes.
    Each seed is deterministic, so the results do not depend on ``jobs`` (tested)."""
    args = [(split, replace(cfg, seed=cfg.seed + s), predictor, progress and jobs <= 1) for s in range(seeds)]
    return parallel_map(_seed_job, args, jobs)


def run_eval(ds: Dataset, out_dir: Path | str, cfg: TrainConfig, seeds: int = 3,
             progress: bool = True, jobs: int = 1) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    split = make_split(ds)
    t0 = time.perf_counter()
    predictor, pmetrics = train_context_predictor(split)
    pmetrics["seconds"] = time.perf_counter() - t0
    runs = run_seeds(split, cfg, seeds, progress, predictor, jobs)
    for s, r in enumerate(runs):
        log.warning("seed %d done in %.0fs: %s", cfg.seed + s, r["seed_seconds"],
                    {m: round(r["models"][m]["recall@100"], 4) for m in MODELS})
    wall = time.perf_counter() - t_all
    report = {
        "dataset": ds.name,
        "protocol": PROTOCOL.format(n=len(split.vocab), seeds=[cfg.seed + s for s in range(seeds)]),
        "models": {m: {k: float(np.mean([r["models"][m][k] for r in runs])) for k in METRICS} for m in MODELS},
        "by_length_quartile": {m: [{k: float(np.mean([r["quartiles"][m][q][k] for r in runs])) for k in METRICS}
                                   for q in range(4)] for m in MODELS},
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    details = {"config": cfg.to_dict(), "wall_seconds": wall, "jobs": jobs, "runs": runs, "users": len(split.users),
               "context_predictor": pmetrics,
               "items": len(split.vocab), "events": int(len(ds.events))}
    (out_dir / "details.json").write_text(json.dumps(details, indent=1, default=float))
    write_markdown(out_dir, report, runs, cfg, wall, details)
    write_plots(out_dir, report, runs)
    return report


def _fmt(vals: list[float]) -> str:
    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}"


def write_markdown(out_dir: Path, report: dict, runs: list[dict], cfg: TrainConfig, wall: float,
                   details: dict) -> None:
    lines = [f"# Evaluation: {report['dataset']}", "", f"Protocol: {report['protocol']}.", "",
             f"{details['users']} users, {details['items']} items, {details['events']} events; "
             f"{len(runs)} seeds ({details.get('jobs', 1)} in parallel); wall time {wall:.0f} s.", "",
             "| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for m in MODELS:
        lines.append(f"| {m} | " + " | ".join(_fmt([r["models"][m][k] for r in runs]) for k in METRICS) + " |")
    lr, sr = report["models"]["longretriever"], report["models"]["sasrec"]
    ratio = lr["recall@100"] / sr["recall@100"] if sr["recall@100"] > 0 else float("nan")
    lines += ["", f"longretriever / sasrec recall@100 = {ratio:.3f}; hr@10 {lr['hr@10']:.4f} vs "
              f"{sr['hr@10']:.4f}.", "", "## recall@100 by history-length quartile (shortest first)", "",
              "| model | Q1 | Q2 | Q3 | Q4 |", "|---|---|---|---|---|"]
    for m in MODELS:
        lines.append(f"| {m} | " + " | ".join(f"{q['recall@100']:.4f}" for q in report["by_length_quartile"][m]) + " |")
    lines += ["", "## Context choice (LongRetriever, same trained model)", "",
              "| choice | hr@10 | recall@100 | recall@200 | picked on validation (seeds) |", "|---|---|---|---|---|"]
    for c in ("frequency", "learned"):
        if all(c in r.get("by_choice", {}) for r in runs):
            picked = sum(r["notes"].get("context_choice") == c for r in runs)
            lines.append(f"| {c} | " + " | ".join(_fmt([r["by_choice"][c][k] for r in runs])
                                                  for k in ("hr@10", "recall@100", "recall@200"))
                         + f" | {picked}/{len(runs)} |")
    pm = details.get("context_predictor")
    if pm:
        lines += ["", f"Next-context predictor (validation targets): top-1 {pm['val_top1']:.3f} vs "
                  f"{pm['val_top1_frequency']:.3f} for recency-weighted frequency; target context among "
                  f"the 8 chosen {pm['val_top8']:.3f} vs {pm['val_top8_frequency']:.3f}; log loss "
                  f"{pm['val_log_loss']:.3f}; {pm['examples']} training examples, {pm['seconds']:.0f} s."]
    lines += ["", "## Settings", "", "```json", json.dumps(cfg.to_dict(), indent=1), "```", "",
              "SASRec N chosen per seed on validation: " +
              ", ".join(str(r["notes"]["sasrec_n"]) for r in runs), "",
              "Training seconds per model (mean): " +
              ", ".join(f"{m} {np.mean([r['seconds'][m] for r in runs]):.0f}" for m in MODELS), ""]
    (out_dir / "report.md").write_text("\n".join(lines))
