"""The evaluation report's plots (``eval --out DIR``): recall@K, recall@100 by history-length
quartile, and the training loss -- each with a title, mean ± std over the seeds as error bars,
and plainly labelled axes; the losses one panel per model, since every model has its own
objective and scale. Figures are built by pure functions (tested) and saved by
:func:`write_plots`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

KS = (10, 50, 100, 200)
QUARTILES = ("Q1 (shortest)", "Q2", "Q3", "Q4 (longest)")
LOSS_NAMES = {"sasrec": "SASRec: in-batch sampled softmax",
              "multi_interest": "multi-interest: in-batch sampled softmax",
              "longretriever": "LongRetriever: exact in-context softmax, seen items masked"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _seeds(runs: list[dict]) -> str:
    return f"mean ± std over {len(runs)} seed{'s' if len(runs) != 1 else ''}"


def _models(report: dict) -> list[str]:
    return list(report["models"])  # the report's own order (export.report.MODELS)


def _recall_at(run_models: dict, model: str, k: int) -> float:
    m = run_models[model]
    return float(m["hr@10"] if k == 10 else m[f"recall@{k}"])  # one target: hr@10 == recall@10


def recall_figure(report: dict, runs: list[dict]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in _models(report):
        vals = np.array([[_recall_at(r["models"], m, k) for k in KS] for r in runs])
        ax.errorbar(KS, vals.mean(0), yerr=vals.std(0), marker="o", capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.minorticks_off()
    ax.set_xlabel("K (candidates retrieved, log scale)")
    ax.set_ylabel("recall@K")
    ax.set_title(f"{report['dataset']}: recall@K, {_seeds(runs)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def quartile_figure(report: dict, runs: list[dict]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(QUARTILES))
    models = _models(report)
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        vals = np.array([[q["recall@100"] for q in r["quartiles"][m]] for r in runs])
        ax.bar(x + (i - (len(models) - 1) / 2) * width, vals.mean(0), width, yerr=vals.std(0),
               capsize=2, label=m)
    ax.set_xticks(x, QUARTILES)
    ax.set_xlabel("users by history length (quartiles)")
    ax.set_ylabel("recall@100")
    ax.set_title(f"{report['dataset']}: recall@100 by history length, {_seeds(runs)}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
    ax.legend(fontsize=8, ncols=2, loc="upper left")
    fig.tight_layout()
    return fig


def loss_figure(report: dict, runs: list[dict]):
    plt = _plt()
    models = [m for m in _models(report) if all(r.get("loss", {}).get(m) for r in runs)]
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(4.2 * max(1, len(models)), 3.6), squeeze=False)
    for ax, m in zip(axes[0], models):
        n = min(len(r["loss"][m]) for r in runs)
        vals = np.array([r["loss"][m][:n] for r in runs], dtype=np.float64)
        epochs = np.arange(1, n + 1)
        mean, std = vals.mean(0), vals.std(0)
        ax.plot(epochs, mean, marker="o")
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.25)
        ax.set_title(LOSS_NAMES.get(m, m), fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{report['dataset']}: training loss per model ({_seeds(runs)}; own scale each)")
    fig.tight_layout()
    return fig


def write_plots(out_dir: Path, report: dict, runs: list[dict[str, Any]]) -> list[Path]:
    """recall_at_k.png, by_length_quartile.png and training_loss.png in ``out_dir``."""
    plt = _plt()
    out = []
    for name, build in (("recall_at_k.png", recall_figure), ("by_length_quartile.png", quartile_figure),
                        ("training_loss.png", loss_figure)):
        fig = build(report, runs)
        fig.savefig(Path(out_dir) / name, dpi=110)
        plt.close(fig)
        out.append(Path(out_dir) / name)
    return out
