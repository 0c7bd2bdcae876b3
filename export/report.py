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
from longretriever.export.device import default_threads
from longretriever.export.parallel import parallel_map
from longretriever.export.plots import write_plots
from longretriever.export.evaluate import (METRICS, eval_longretriever, eval_multi_interest,
                             eval_oracle, eval_popularity, eval_sasrec, make_cases, mean_metrics, plan_cases,
                             quartiles, rank_metrics)
from longretriever.export.train import Split, TrainConfig, make_split, train_longretriever
from longretriever.data.events import Dataset
from longretriever.data.synth import Truth
from longretriever.export.buckets import length_buckets, mean_buckets, write_length_plot

log = logging.getLogger(__name__)
MODELS = ("popularity", "sasrec", "multi_interest", "longretriever")
PROTOCOL = ("leave-last-out (last event = test, second-to-last = validation, rest = train); "
            "full-corpus ranking over all {n} items, {seen}; epoch chosen on "
            "validation recall@100; mean over seeds {seeds}")


#: one training job each (a seed is these four jobs); longest first so parallel workers end together
TASKS = ("longretriever", "sasrec200", "sasrec50", "multi_interest")


def run_task(split: Split, cfg: TrainConfig, task: str, progress: bool = False,
             exclude_seen: bool = True) -> dict[str, Any]:
    """Train one model of one seed (``task`` in :data:`TASKS`) and score it on the test cases:
    its summaries only (metrics, length quartiles and buckets, loss and validation curves,
    examples/s, seconds), so the job can run in another process. ``exclude_seen=False`` is the
    repeat-consumption protocol (seen items ranked too), for validation and test alike."""
    xs = exclude_seen
    val, test = make_cases(split, "val"), make_cases(split, "test")
    r100 = lambda rows: mean_metrics(rows)["recall@100"]  # noqa: E731
    t0 = time.perf_counter()
    out: dict[str, Any] = {"task": task, "notes": {}}
    if task.startswith("sasrec"):
        n = int(task[len("sasrec"):])
        res = train_sasrec(split, cfg, n, lambda m: r100(rank_metrics(eval_sasrec(m, split, val, xs))), progress)
        rows = rank_metrics(eval_sasrec(res.model, split, test, xs))
        out["val_best"] = max(res.val_curve) if res.val_curve else 0.0
    elif task == "multi_interest":
        res = train_multi_interest(split, cfg, 50, 4,
                                   lambda m: r100(rank_metrics(eval_multi_interest(m, split, val, xs))), progress)
        rows = rank_metrics(eval_multi_interest(res.model, split, test, xs))
    elif task == "longretriever":
        # the next-context predictor is trained here, in this job, so the SASRec and
        # multi-interest jobs need not wait for it; the epoch is chosen with the context choice
        # the model will most likely be served with
        t_p = time.perf_counter()
        predictor, pmetrics = train_context_predictor(split)
        pmetrics["seconds"] = time.perf_counter() - t_p
        out["notes"]["context_predictor"] = pmetrics
        lp_val = plan_cases(split, val, cfg.k, cfg.w, scorer=predictor, exclude_seen=xs)
        lp_test = plan_cases(split, test, cfg.k, cfg.w, exclude_seen=xs)
        res = train_longretriever(split, cfg.serving(xs),
                                  lambda m: r100(eval_longretriever(m, split, val, lp_val)), progress)
        by_rows = {"frequency": eval_longretriever(res.model, split, test, lp_test)}
        choice = "frequency"
        if predictor is not None:  # always, unless the split has no usable context
            val_by = compare_choices(res.model, split, val, cfg.k, cfg.w, predictor, exclude_seen=xs)
            lt = plan_cases(split, test, cfg.k, cfg.w, scorer=predictor, exclude_seen=xs)
            by_rows["learned"] = eval_longretriever(res.model, split, test, lt)
            choice = pick_choice(val_by)
            out["notes"]["context_choice_val"] = {c: m["recall@100"] for c, m in val_by.items()}
        out["notes"]["context_choice"] = choice
        out["by_choice"] = {c: mean_metrics(r) for c, r in by_rows.items()}
        rows = by_rows[choice]
    else:
        raise ValueError(f"unknown evaluation task {task!r}")
    out.update(metrics=mean_metrics(rows), quartiles=quartiles(split, test, rows),
               buckets=length_buckets(split, test, rows), loss=res.losses, val=res.val_curve,
               examples_per_s=res.examples_per_s, seconds=time.perf_counter() - t0)
    return out


def _task_job(args) -> dict[str, Any]:
    """One (seed, model) job, in a worker process when parallel."""
    split, cfg, task, progress, exclude_seen = args
    import torch

    torch.set_num_threads(max(1, cfg.threads or default_threads()))
    return run_task(split, cfg, task, progress, exclude_seen)


def assemble_seed(split: Split, tasks: dict[str, dict[str, Any]], exclude_seen: bool = True) -> dict[str, Any]:
    """One seed's results from its jobs: popularity scored here, SASRec's N picked on
    validation (the better of N=50 and N=200)."""
    out: dict[str, Any] = {"models": {}, "quartiles": {}, "buckets": {}, "loss": {}, "val": {}, "seconds": {},
                           "examples_per_s": {}, "notes": {}}
    test = make_cases(split, "test")
    rows = rank_metrics(eval_popularity(split, test, exclude_seen))
    out["models"]["popularity"] = mean_metrics(rows)
    out["quartiles"]["popularity"] = quartiles(split, test, rows)
    out["buckets"]["popularity"] = length_buckets(split, test, rows)
    out["seconds"]["popularity"] = 0.0
    for n in (50, 200):
        out["notes"][f"sasrec{n}_val_recall@100"] = tasks[f"sasrec{n}"]["val_best"]
    n = 200 if tasks["sasrec200"]["val_best"] > tasks["sasrec50"]["val_best"] else 50
    out["notes"]["sasrec_n"] = n
    chosen = {"sasrec": tasks[f"sasrec{n}"], "multi_interest": tasks["multi_interest"],
              "longretriever": tasks["longretriever"]}
    for name, t in chosen.items():
        out["models"][name] = t["metrics"]
        for key in ("quartiles", "buckets", "loss", "val", "examples_per_s"):
            out[key][name] = t[key]
        out["notes"].update(t["notes"])
    out["seconds"].update({"sasrec": tasks["sasrec50"]["seconds"] + tasks["sasrec200"]["seconds"],
                           "multi_interest": tasks["multi_interest"]["seconds"],
                           "longretriever": tasks["longretriever"]["seconds"]})
    out["by_choice"] = tasks["longretriever"]["by_choice"]
    out["seed_seconds"] = sum(t["seconds"] for t in tasks.values())
    return out


def run_seeds(split: Split, cfg: TrainConfig, seeds: int, progress: bool,
              jobs: int = 1, exclude_seen: bool = True) -> list[dict[str, Any]]:
    """Every seed's results, in seed order. The unit of parallel work is one model of one
    seed (:data:`TASKS`), so ``--jobs 2`` keeps both cores busy with one seed too; each job is
    deterministic, so the results do not depend on ``jobs`` (tested)."""
    jobs = max(1, jobs)
    threads = cfg.threads or default_threads(min(jobs, seeds * len(TASKS)))
    keys = [(s, t) for s in range(seeds) for t in TASKS]
    args = [(split, replace(cfg, seed=cfg.seed + s, threads=threads), t, progress and jobs <= 1,
             exclude_seen) for s, t in keys]
    results = parallel_map(_task_job, args, jobs)
    by_seed: list[dict[str, dict[str, Any]]] = [{} for _ in range(seeds)]
    for (s, t), r in zip(keys, results):
        by_seed[s][t] = r
    return [assemble_seed(split, tasks, exclude_seen) for tasks in by_seed]


def run_eval(ds: Dataset, out_dir: Path | str, cfg: TrainConfig, seeds: int = 3,
             progress: bool = True, jobs: int = 1, exclude_seen: bool = True) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    split = make_split(ds)
    runs = run_seeds(split, cfg, seeds, progress, jobs, exclude_seen)
    pmetrics = runs[0]["notes"].get("context_predictor")
    models = MODELS
    if ds.truth is not None:  # a synthetic set: the generator's own ranking is the ceiling
        add_oracle(split, Truth.load(ds.truth), runs, exclude_seen)
        models = (*MODELS, "oracle")
    for s, r in enumerate(runs):
        log.info("seed %d: %.0f s of training: %s", cfg.seed + s, r["seed_seconds"],
                    {m: round(r["models"][m]["recall@100"], 4) for m in models})
    wall = time.perf_counter() - t_all
    report = {
        "dataset": ds.name,
        "protocol": PROTOCOL.format(n=len(split.vocab), seeds=[cfg.seed + s for s in range(seeds)],
                                    seen="seen items excluded" if exclude_seen else
                                    "seen items ranked too (repeat-consumption protocol, --include-seen)"),
        "models": {m: {k: float(np.mean([r["models"][m][k] for r in runs])) for k in METRICS} for m in models},
        "by_length_quartile": {m: [{k: float(np.mean([r["quartiles"][m][q][k] for r in runs])) for k in METRICS}
                                   for q in range(4)] for m in models},
        "by_length_bucket": {m: mean_buckets([r["buckets"][m] for r in runs]) for m in models},
        "train_examples_per_s": {m: float(np.mean([r["examples_per_s"][m] for r in runs]))
                                 for m in MODELS if all(m in r.get("examples_per_s", {}) for r in runs)},
    }
    if "oracle" in report["models"]:
        report["fraction_of_oracle"] = {m: {k: report["models"][m][k] / report["models"]["oracle"][k]
                                            for k in ("hr@10", "recall@100", "recall@200")
                                            if report["models"]["oracle"][k] > 0} for m in MODELS}
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    details = {"config": cfg.to_dict(), "wall_seconds": wall, "jobs": jobs, "runs": runs, "users": len(split.users),
               "context_predictor": pmetrics,
               "items": len(split.vocab), "events": int(len(ds.events))}
    (out_dir / "details.json").write_text(json.dumps(details, indent=1, default=float))
    write_markdown(out_dir, report, runs, cfg, wall, details)
    write_plots(out_dir, report, runs)
    write_length_plot(out_dir, report)
    return report


def add_oracle(split: Split, truth, runs: list[dict[str, Any]], exclude_seen: bool = True) -> None:
    """The ceiling row (the same for every seed): the generator's probabilities ranked
    under the same protocol, on the same test cases."""
    test = make_cases(split, "test")
    rows = rank_metrics(eval_oracle(split, test, truth, exclude_seen))
    for r in runs:
        r["models"]["oracle"] = mean_metrics(rows)
        r["quartiles"]["oracle"] = quartiles(split, test, rows)
        r["buckets"]["oracle"] = length_buckets(split, test, rows)
        r["seconds"]["oracle"] = 0.0


def _fmt(vals: list[float]) -> str:
    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}"


def write_markdown(out_dir: Path, report: dict, runs: list[dict], cfg: TrainConfig, wall: float,
                   details: dict) -> None:
    lines = [f"# Evaluation: {report['dataset']}", "", f"Protocol: {report['protocol']}.", "",
             f"{details['users']} users, {details['items']} items, {details['events']} events; "
             f"{len(runs)} seed(s), {details.get('jobs', 1)} training job(s) in parallel; wall time {wall:.0f} s.", "",
             "| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    models = list(report["models"])
    for m in models:
        lines.append(f"| {m} | " + " | ".join(_fmt([r["models"][m][k] for r in runs]) for k in METRICS) + " |")
    lr, sr = report["models"]["longretriever"], report["models"]["sasrec"]
    ratio = lr["recall@100"] / sr["recall@100"] if sr["recall@100"] > 0 else float("nan")
    hr = lr["hr@10"] / sr["hr@10"] if sr["hr@10"] > 0 else float("nan")
    lines += ["", f"longretriever / sasrec: recall@100 {ratio:.3f}x, hr@10 {hr:.3f}x "
              f"({lr['hr@10']:.4f} vs {sr['hr@10']:.4f})."]
    if "fraction_of_oracle" in report:
        lines += ["", "Share of the ceiling (the generator's own probabilities, `oracle`, same protocol):", "",
                  "| model | hr@10 | recall@100 | recall@200 |", "|---|---|---|---|"]
        for m, f in report["fraction_of_oracle"].items():
            lines.append(f"| {m} | " + " | ".join(f"{f.get(k, float('nan')):.0%}"
                                                  for k in ("hr@10", "recall@100", "recall@200")) + " |")
    eps = report.get("train_examples_per_s", {})
    if eps:
        lines += ["", "Training examples/s (optimisation only, mean over seeds): "
                  + ", ".join(f"{m} {v:,.0f}" for m, v in eps.items()) + "."]
    buckets = report.get("by_length_bucket", {})
    keys = list(buckets.get("longretriever", {}))
    if len(keys) >= 2:
        lines += ["", "## recall@100 by history length (events before the test target)", "",
                  "| model | " + " | ".join(f"{k} (n={buckets['longretriever'][k]['users']})" for k in keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for m, b in buckets.items():
            lines.append(f"| {m} | " + " | ".join(f"{b[k]['recall@100']:.4f}" if k in b else "-" for k in keys) + " |")
        sb = buckets.get("sasrec", {})
        lines.append("| longretriever / sasrec | " + " | ".join(
            f"{buckets['longretriever'][k]['recall@100'] / sb[k]['recall@100']:.2f}x"
            if k in sb and sb[k]["recall@100"] > 0 else "-" for k in keys) + " |")
    lines += ["", "## recall@100 by history-length quartile (shortest first)", "",
              "| model | Q1 | Q2 | Q3 | Q4 |", "|---|---|---|---|---|"]
    for m in models:
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
