"""``longretriever train | eval | ablate``: data -> model -> bundle, and the evaluator."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from longretriever.core.errors import LongRetrieverError
from longretriever.core.multicontext import CHOICE_OPTIONS


from longretriever.cli.app import app, fail


@app.command("train")
def train_cmd(events: Path = typer.Option(..., help="events CSV or MovieLens folder"),
              items: Optional[Path] = typer.Option(None, help="item_id,category CSV"),
              format: str = typer.Option("csv", "--format", help="csv | movielens"),
              out: Path = typer.Option(..., help="bundle directory to write"),
              epochs: int = 6, batch: int = 256, dim: int = 64, seed: int = 0,
              k: int = 256, w: int = 32, budget: int = 0,
              validate: bool = typer.Option(True, help="keep the best validation epoch"),
              quantize: Optional[str] = typer.Option(None, help="int8: also write encoder.int8.onnx"),
              contexts: Optional[int] = typer.Option(None, help="learn K contexts (k-means over a "
                                                     "first pass's item embeddings) instead of "
                                                     "the item table's categories"),
              context_choice: str = typer.Option("auto", help="how serving picks a user's contexts: "
                                                 "frequency | learned (next-context predictor) | "
                                                 "auto (the better on validation recall@100)"),
              device: str = typer.Option("auto", help="cpu | cuda | auto (a GPU when one is visible)"),
              progress: bool = True) -> None:
    """Train LongRetriever and write a verified model bundle."""
    from longretriever.export.bundle_writer import save_bundle
    from longretriever.export.context_predictor_train import compare_choices, pick_choice, train_context_predictor
    from longretriever.export.evaluate import eval_longretriever, make_cases, mean_metrics, plan_cases
    from longretriever.export.train import TrainConfig, make_split, train_longretriever
    from longretriever.data.events import load_dataset

    if context_choice not in CHOICE_OPTIONS:
        fail(ValueError(f"--context-choice must be auto, frequency or learned, got {context_choice!r}"))
    try:
        ds = load_dataset(events, items, format)  # type: ignore[arg-type]
        cfg = TrainConfig(epochs=epochs, batch=batch, dim=dim, seed=seed, k=k, w=w, budget=budget, device=device)
        if contexts:
            from longretriever.export.learned_contexts import learn_contexts

            ds = learn_contexts(ds, contexts, cfg, progress)
        split = make_split(ds)
        val = make_cases(split, "val")
        val_fn = None
        if validate and val.users.size:
            lp = plan_cases(split, val, k, w)
            val_fn = lambda m: mean_metrics(eval_longretriever(m, split, val, lp))["recall@100"]  # noqa: E731
        res = train_longretriever(split, cfg, val_fn, progress)
        predictor, pmetrics = train_context_predictor(split)
        choice = "frequency" if context_choice == "auto" else context_choice
        by_choice = {}
        if val.users.size:
            by_choice = compare_choices(res.model, split, val, k, w, predictor)
            if context_choice == "auto":
                choice = pick_choice(by_choice)
        metrics = {"loss": res.losses, "val_recall@100": res.val_curve, "best_epoch": res.best_epoch,
                   "train_seconds": res.seconds, "dataset": ds.name, "events": len(ds.events),
                   "context_predictor": pmetrics, "val_by_context_choice": by_choice}
        path = save_bundle(out, res.model, split.vocab, split.item_contexts, split.table.names,
                           split.train_freq, {"k": k, "w": w, "train": cfg.to_dict(),
                                              "context_digest": split.table.digest(),
                                              "context_choice": choice},
                           metrics, quantize, predictor)
    except LongRetrieverError as exc:
        fail(exc)
    typer.echo(json.dumps({"bundle": str(path), "loss": res.losses, "val_recall@100": res.val_curve,
                           "context_choice": choice,
                           "val_recall@100_by_choice": {c: m["recall@100"] for c, m in by_choice.items()}}))

@app.command("eval")
def eval_cmd(events: Path = typer.Option(..., help="events CSV or MovieLens folder"),
             items: Optional[Path] = typer.Option(None),
             format: str = typer.Option("csv", "--format"),
             out: Path = typer.Option(..., help="report directory"),
             seed: int = 0, epochs: int = 6, seeds: int = 3, budget: int = 0,
             jobs: int = typer.Option(2, help="seeds trained in parallel processes (cores / jobs torch threads each)"),
             dim: int = 64, batch: int = 256, k: int = 256, w: int = 32,
             contexts: Optional[int] = typer.Option(None, help="learn K contexts instead of the "
                                                    "item table's categories"),
             device: str = typer.Option("auto", help="cpu | cuda | auto (a GPU when one is visible)"),
             progress: bool = False) -> None:
    """All models x seeds, leave-last-out full-corpus ranking -> report.json/.md + plots."""
    from longretriever.export.report import run_eval
    from longretriever.export.train import TrainConfig
    from longretriever.data.events import load_dataset

    try:
        ds = load_dataset(events, items, format)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        cfg = TrainConfig(epochs=epochs, seed=seed, budget=budget, dim=dim, batch=batch, k=k, w=w, device=device)
        if contexts:
            from longretriever.export.learned_contexts import learn_contexts

            ds = learn_contexts(ds, contexts, cfg, progress)
        rep = run_eval(ds, out, cfg, seeds, progress, jobs)
    except LongRetrieverError as exc:
        fail(exc)
    typer.echo(json.dumps({"report": str(out / "report.json"), "seconds": round(time.perf_counter() - t0, 1),
                           "models": rep["models"]}, indent=1))

@app.command("ablate")
def ablate_cmd(events: Path = typer.Option(..., help="events CSV or MovieLens folder"),
               items: Optional[Path] = typer.Option(None),
               format: str = typer.Option("csv", "--format"),
               out: Path = typer.Option(..., help="directory for ablation.json / ablation.md"),
               seed: int = 0, seeds: int = 1, epochs: int = 6, budget: int = 0,
               jobs: int = typer.Option(2, help="variants trained in parallel processes"),
               include_seen: bool = typer.Option(False, help="score seen items too (repeat-"
                                                 "consumption protocol), for every row")) -> None:
    """Retrain LongRetriever without each part (hard search, recent window, in-context
    negatives) and serve the full model differently (learned choice, fewer contexts)."""
    from longretriever.export.ablation import run_ablation
    from longretriever.export.train import TrainConfig
    from longretriever.data.events import load_dataset

    try:
        ds = load_dataset(events, items, format)  # type: ignore[arg-type]
        res = run_ablation(ds, out, TrainConfig(epochs=epochs, seed=seed, budget=budget), seeds, jobs,
                           exclude_seen=not include_seen)
    except LongRetrieverError as exc:
        fail(exc)
    typer.echo(json.dumps(res["summary"], indent=1))
