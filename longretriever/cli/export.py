"""``longretriever train | eval | ablate``: data -> model -> bundle, and the evaluator.

The input is checked before torch is imported: an events file without an item table, an item
table that matches none of the events, or too few users for the leave-last-out split are
refused (``data.events.check_trainable``) unless ``--contexts K`` / ``--single-context`` says
how to get contexts otherwise."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import enum

import click
import typer

from longretriever.cli.app import FORMAT_HELP, ContextChoice, EventFormat, app
from longretriever.core.errors import ConfigError

EVENTS_HELP = "events CSV (user_id,item_id,timestamp[,action]) or MovieLens folder (--format movielens)"
ITEMS_HELP = ("item_id,category CSV: the item -> context table (default: <events stem>.items.csv "
              "next to the events, as `synth` writes it)")
CONTEXTS_HELP = "learn K contexts (k-means over a first pass's item embeddings) instead of the item table's"
SINGLE_HELP = "train a one-context model when there is no item table (no multi-context retrieval)"
K_HELP = "hard-search length: the newest K events of the target's context the user tower reads"
W_HELP = "recent window: the newest W events of any context the user tower also reads"
BUDGET_HELP = "training positions per user per epoch (0: all of them)"

# the input options train, eval and ablate share
Events = Annotated[Path, typer.Option(help=EVENTS_HELP)]
Items = Annotated[Optional[Path], typer.Option(help=ITEMS_HELP)]
Format = Annotated[EventFormat, typer.Option("--format", help=FORMAT_HELP)]
Budget = Annotated[int, typer.Option(min=0, help=BUDGET_HELP)]
Contexts = Annotated[Optional[int], typer.Option(help=CONTEXTS_HELP)]
SingleContext = Annotated[bool, typer.Option(help=SINGLE_HELP)]


class DeviceChoice(str, enum.Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class PretrainChoice(str, enum.Enum):
    ppmi_mix = "ppmi_mix"
    ppmi = "ppmi"
    ppmi_global = "ppmi_global"
    none = "none"


Pretrain = Annotated[PretrainChoice, typer.Option(help="LongRetriever's item-embedding start: ppmi_mix "
                                                  "(per-context + global PPMI-SVD dimensions) | ppmi "
                                                  "(per-context) | ppmi_global | none (random)")]
Device = Annotated[DeviceChoice, typer.Option(help="where torch trains: cpu | cuda | auto (a GPU when "
                                              "one is visible, else the CPU)")]


def dataset(events: Path, items: Optional[Path], fmt: EventFormat, contexts: Optional[int] = None,
            single_context: bool = False):
    """Load and check a training dataset (see the module docstring); returns (dataset, the
    items file used or None)."""
    from longretriever.core.contexts import ContextTable
    from longretriever.data.events import check_trainable, items_next_to, load_dataset

    if single_context and (items is not None or contexts):
        raise ConfigError("--single-context trains without contexts: drop --items / --contexts")
    if contexts is not None and contexts < 1:
        raise ConfigError(f"--contexts must be >= 1, got {contexts}")
    if items is None and fmt is EventFormat.csv and not (single_context or contexts):
        found = items_next_to(events)
        items = found if found.is_file() else None
    ds = load_dataset(events, items, fmt.value)
    if single_context:
        from dataclasses import replace

        ds = replace(ds, contexts=ContextTable.single())
    check_trainable(ds, multi_context=not (single_context or contexts))
    return ds, items


@app.command("train")
def train_cmd(events: Events,
              items: Items = None,
              fmt: Format = EventFormat.csv,
              out: Path = typer.Option(..., help="bundle directory to write"),
              epochs: int = typer.Option(6, min=1, help="training epochs"),
              batch: int = typer.Option(256, min=1, help="batch size (examples per step)"),
              dim: int = typer.Option(64, min=1, help="embedding dimension of both towers"),
              seed: int = typer.Option(0, help="random seed (training is deterministic per seed)"),
              k: int = typer.Option(256, min=0, help=K_HELP),
              w: int = typer.Option(32, min=0, help=W_HELP),
              budget: Budget = 0,
              validate: bool = typer.Option(True, help="keep the best validation epoch"),
              quantize: Optional[str] = typer.Option(None, help="int8: also write encoder.int8.onnx",
                                                     click_type=click.Choice(["int8"])),
              contexts: Contexts = None,
              single_context: SingleContext = False,
              context_choice: ContextChoice = typer.Option(
                  ContextChoice.auto, help="how serving picks a user's contexts: frequency | "
                  "learned (next-context predictor) | auto (the better on validation recall@100)"),
              device: Device = DeviceChoice.auto,
              pretrain: Pretrain = PretrainChoice.ppmi_mix,
              progress: bool = typer.Option(True, help="show progress bars")) -> None:
    """Train LongRetriever and write a verified model bundle."""
    ds, items_used = dataset(events, items, fmt, contexts, single_context)
    from longretriever.export.bundle_writer import save_bundle
    from longretriever.export.context_predictor_train import compare_choices, pick_choice, train_context_predictor
    from longretriever.export.evaluate import eval_longretriever, make_cases, mean_metrics, plan_cases
    from longretriever.export.train import TrainConfig, make_split, train_longretriever

    cfg = TrainConfig(epochs=epochs, batch=batch, dim=dim, seed=seed, k=k, w=w, budget=budget,
                      device=device.value, pretrain=pretrain.value)
    if contexts:
        from longretriever.export.learned_contexts import learn_contexts

        ds = learn_contexts(ds, contexts, cfg, progress)
    split = make_split(ds)
    val = make_cases(split, "val")
    predictor, pmetrics = train_context_predictor(split)
    val_fn = None
    if validate and val.users.size:  # epochs are compared under the choice serving will likely use
        lp = plan_cases(split, val, k, w, scorer=None if context_choice.value == "frequency" else predictor)
        val_fn = lambda m: mean_metrics(eval_longretriever(m, split, val, lp))["recall@100"]  # noqa: E731
    res = train_longretriever(split, cfg, val_fn, progress)
    choice = "frequency" if context_choice.value == "auto" else context_choice.value
    by_choice = {}
    if val.users.size:
        by_choice = compare_choices(res.model, split, val, k, w, predictor)
        if context_choice.value == "auto":
            choice = pick_choice(by_choice)
    metrics = {"loss": res.losses, "val_recall@100": res.val_curve, "best_epoch": res.best_epoch,
               "train_seconds": res.seconds, "dataset": ds.name, "events": len(ds.events),
               "context_predictor": pmetrics, "val_by_context_choice": by_choice}
    path = save_bundle(out, res.model, split.vocab, split.item_contexts, split.table.names,
                       split.train_freq, {"k": k, "w": w, "train": cfg.to_dict(),
                                          "context_digest": split.table.digest(),
                                          "context_choice": choice},
                       metrics, quantize, predictor)
    typer.echo(json.dumps({"bundle": str(path), "items": str(items_used) if items_used else None,
                           "contexts": len(split.table.names) - (1 if split.table.item_ids.size else 0),
                           "loss": res.losses, "val_recall@100": res.val_curve, "context_choice": choice,
                           "val_recall@100_by_choice": {c: m["recall@100"] for c, m in by_choice.items()}}))


@app.command("eval")
def eval_cmd(events: Events,
             items: Items = None,
             fmt: Format = EventFormat.csv,
             out: Path = typer.Option(..., help="report directory (report.json/.md, details.json, plots)"),
             seed: int = typer.Option(0, help="first seed; seeds are SEED..SEED+SEEDS-1"),
             epochs: int = typer.Option(6, min=1, help="training epochs of every model"),
             seeds: int = typer.Option(3, min=1, help="seeds per model (mean ± std in the report)"),
             budget: Budget = 0,
             jobs: int = typer.Option(2, min=1, help="training jobs (one model of one seed "
                                        "each) run in parallel processes, cores / jobs torch threads each"),
             dim: int = typer.Option(64, min=1, help="embedding dimension of every model"),
             batch: int = typer.Option(256, min=1, help="batch size of every model"),
             k: int = typer.Option(256, min=0, help=K_HELP),
             w: int = typer.Option(32, min=0, help=W_HELP),
             contexts: Contexts = None,
             single_context: SingleContext = False,
             device: Device = DeviceChoice.auto,
             pretrain: Pretrain = PretrainChoice.ppmi_mix,
             include_seen: bool = typer.Option(False, help="rank seen items too (repeat-consumption "
                                               "protocol) for every model; default: seen items excluded"),
             progress: bool = typer.Option(False, help="show progress bars (only with --jobs 1)")) -> None:
    """All models x seeds, leave-last-out full-corpus ranking -> report.json/.md + plots."""
    ds, _ = dataset(events, items, fmt, contexts, single_context)
    from longretriever.export.report import run_eval
    from longretriever.export.train import TrainConfig

    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, seed=seed, budget=budget, dim=dim, batch=batch, k=k, w=w,
                      device=device.value, pretrain=pretrain.value)
    if contexts:
        from longretriever.export.learned_contexts import learn_contexts

        ds = learn_contexts(ds, contexts, cfg, progress)
    rep = run_eval(ds, out, cfg, seeds, progress, jobs, exclude_seen=not include_seen)
    typer.echo(json.dumps({"report": str(out / "report.json"), "seconds": round(time.perf_counter() - t0, 1),
                           "models": rep["models"]}, indent=1))


@app.command("ablate")
def ablate_cmd(events: Events,
               items: Items = None,
               fmt: Format = EventFormat.csv,
               out: Path = typer.Option(..., help="directory for ablation.json / ablation.md"),
               seed: int = typer.Option(0, help="first seed"),
               seeds: int = typer.Option(1, min=1, help="seeds per variant"),
               epochs: int = typer.Option(6, min=1, help="training epochs per variant"),
               budget: Budget = 0,
               jobs: int = typer.Option(2, min=1, help="variants trained in parallel processes"),
               include_seen: bool = typer.Option(False, help="score seen items too (repeat-"
                                                 "consumption protocol), for every row")) -> None:
    """Retrain LongRetriever without each part (hard search, recent window, seen-item mask,
    co-occurrence init) and serve the full model differently (frequency choice, fewer contexts)."""
    ds, _ = dataset(events, items, fmt)
    from longretriever.export.ablation import run_ablation
    from longretriever.export.train import TrainConfig

    res = run_ablation(ds, out, TrainConfig(epochs=epochs, seed=seed, budget=budget), seeds, jobs,
                       exclude_seen=not include_seen)
    typer.echo(json.dumps(res["summary"], indent=1))
