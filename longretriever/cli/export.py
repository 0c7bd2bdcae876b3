"""Subcommands of the `export` package: ``train``, ``eval`` and ``bench encoder``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from longretriever.core.errors import LongRetrieverError
from longretriever.core.multicontext import CONTEXT_CHOICES


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def bench_encoder(bundle_path: Path, out: Path, seq_len: int = 256, batches=(1, 8, 64),
                  repeats: int = 30, threads: int = 2) -> dict:
    """Median latency of one encoder call on random rows of ``seq_len`` searched items (W =
    bundle w): eager torch (from the bundle's ``model.pt``) vs ORT fp32 vs ORT dynamic int8
    (the bundle's encoder.int8.onnx, or a temporary quantisation next to ``out``)."""
    import onnxruntime as ort
    import torch

    from longretriever.export.bundle import OUTPUT_NAME, load_bundle, quantize_int8
    from longretriever.core.features import INPUT_NAMES
    from longretriever.export.model import LongRetrieverModel, ModelConfig

    b = load_bundle(bundle_path, intra_op_threads=threads)
    rng = np.random.default_rng(0)
    int8 = b.path / "encoder.int8.onnx"
    tmp_int8 = None
    if not int8.is_file():
        tmp_int8 = out.parent / (out.stem + ".int8.onnx")
        quantize_int8(b.path / "encoder.onnx", tmp_int8)
        int8 = tmp_int8
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    s8 = ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])
    model = None
    state = b.path / "model.pt"
    if state.is_file():
        cfg = ModelConfig(**b.config["model"])
        model = LongRetrieverModel(cfg, b.item_contexts)
        model.load_state_dict(torch.load(state, weights_only=True))
        model.eval()
    torch.set_num_threads(threads)

    def timeit(fn) -> float:
        for _ in range(3):
            fn()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts) * 1000), float(np.min(ts) * 1000)

    runs = []
    for bs in batches:
        rows = [b.item_ids[rng.integers(0, b.item_ids.size, seq_len)] for _ in range(bs)]
        rec = [b.item_ids[rng.integers(0, b.item_ids.size, b.w)] for _ in range(bs)]
        ctx = rng.integers(0, len(b.context_names), bs)
        feeds = b.inputs(rows, rec, ctx)
        fp32_ms, fp32_min = timeit(lambda: b.session.run([OUTPUT_NAME], feeds))
        int8_ms, _ = timeit(lambda: s8.run([OUTPUT_NAME], feeds))
        torch_ms = None
        if model is not None:
            targs = [torch.as_tensor(feeds[n]) for n in INPUT_NAMES]
            with torch.no_grad():
                torch_ms, _ = timeit(lambda: model(*targs))
        feat_ms, _ = timeit(lambda: b.inputs(rows, rec, ctx))
        runs.append({"batch": bs, "seq_len": seq_len, "torch_ms": torch_ms, "onnx_fp32_ms": fp32_ms,
                     "onnx_int8_ms": int8_ms, "vectors_per_s": bs / fp32_ms * 1000,
                     "vectors_per_s_best": bs / fp32_min * 1000, "features_ms": feat_ms})
    if tmp_int8 is not None:
        tmp_int8.unlink(missing_ok=True)
    result = {"bundle": str(b.path), "version": b.version, "threads": threads, "repeats": repeats,
              "statistic": "median ms per call (vectors_per_s from the fp32 median; _best from the min)",
              "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add this package's commands to the root CLI."""

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
                  progress: bool = True) -> None:
        """Train LongRetriever and write a verified model bundle."""
        from longretriever.export.bundle import save_bundle
        from longretriever.export.context_predictor_train import compare_choices, pick_choice, train_context_predictor
        from longretriever.export.evaluate import eval_longretriever, make_cases, mean_metrics, plan_cases
        from longretriever.export.train import TrainConfig, make_split, train_longretriever
        from longretriever.data.events import load_dataset

        if context_choice not in ("auto", *CONTEXT_CHOICES):
            _fail(ValueError(f"--context-choice must be auto, frequency or learned, got {context_choice!r}"))
        try:
            ds = load_dataset(events, items, format)  # type: ignore[arg-type]
            cfg = TrainConfig(epochs=epochs, batch=batch, dim=dim, seed=seed, k=k, w=w, budget=budget)
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
            _fail(exc)
        typer.echo(json.dumps({"bundle": str(path), "loss": res.losses, "val_recall@100": res.val_curve,
                               "context_choice": choice,
                               "val_recall@100_by_choice": {c: m["recall@100"] for c, m in by_choice.items()}}))

    @app.command("eval")
    def eval_cmd(events: Path = typer.Option(..., help="events CSV or MovieLens folder"),
                 items: Optional[Path] = typer.Option(None),
                 format: str = typer.Option("csv", "--format"),
                 out: Path = typer.Option(..., help="report directory"),
                 seed: int = 0, epochs: int = 6, seeds: int = 3, budget: int = 0,
                 jobs: int = typer.Option(2, help="seeds trained in parallel processes (1 torch thread each)"),
                 dim: int = 64, batch: int = 256, k: int = 256, w: int = 32,
                 contexts: Optional[int] = typer.Option(None, help="learn K contexts instead of the "
                                                        "item table's categories"),
                 progress: bool = False) -> None:
        """All models x seeds, leave-last-out full-corpus ranking -> report.json/.md + plots."""
        from longretriever.export.report import run_eval
        from longretriever.export.train import TrainConfig
        from longretriever.data.events import load_dataset

        try:
            ds = load_dataset(events, items, format)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            cfg = TrainConfig(epochs=epochs, seed=seed, budget=budget, dim=dim, batch=batch, k=k, w=w)
            if contexts:
                from longretriever.export.learned_contexts import learn_contexts

                ds = learn_contexts(ds, contexts, cfg, progress)
            rep = run_eval(ds, out, cfg, seeds, progress, jobs)
        except LongRetrieverError as exc:
            _fail(exc)
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
            _fail(exc)
        typer.echo(json.dumps(res["summary"], indent=1))

    @bench_app.command("encoder")
    def bench_encoder_cmd(bundle: Path = typer.Option(...), out: Path = typer.Option(...),
                          seq_len: int = 256, threads: int = 2, repeats: int = 30) -> None:
        """Encoder latency at batch 1/8/64: eager torch vs ORT fp32 vs ORT int8 -> JSON."""
        try:
            res = bench_encoder(bundle, out, seq_len, (1, 8, 64), repeats, threads)
        except LongRetrieverError as exc:
            _fail(exc)
        typer.echo(json.dumps(res["runs"], indent=1))
