"""Results by history length: log-spaced buckets of the users' history length at the test
target (100-300, 300-1k, 1k-3k, 3k-10k, ... events), each model's metrics per bucket and the
LongRetriever / SASRec ratio, plus the plot of that curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from longretriever.export.evaluate import METRICS, Cases, mean_metrics
from longretriever.export.train import Split

EDGES = (10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000, 300_000)


def bucket_of(lengths: np.ndarray) -> np.ndarray:
    """Bucket index per history length: bucket i holds [EDGES[i], EDGES[i+1]) (below 10: -1)."""
    return np.searchsorted(np.asarray(EDGES), np.asarray(lengths), side="right") - 1


def length_buckets(split: Split, cases: Cases, rows: Sequence[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """``{"100-300": {"users": n, "hr@10": ..., ...}}`` for every non-empty bucket."""
    b = bucket_of(cases.ends)
    out: dict[str, dict[str, Any]] = {}
    for i in np.unique(b[b >= 0]).tolist():
        idx = np.flatnonzero(b == i)
        out[f"{EDGES[i]}-{EDGES[i + 1]}"] = {"users": int(idx.size), **mean_metrics([rows[j] for j in idx])}
    return out


def mean_buckets(per_seed: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    keys = [k for k in per_seed[0] if all(k in s for s in per_seed)]
    return {k: {"users": per_seed[0][k]["users"],
                **{m: float(np.mean([s[k][m] for s in per_seed])) for m in METRICS}} for k in keys}


def write_length_plot(out_dir: Path, report: dict[str, Any], metric: str = "recall@100") -> Path | None:
    """recall@100 by history-length bucket per model, and LongRetriever / SASRec on a second
    axis (the curve the gain-with-length claim is read from). None with fewer than 2 buckets."""
    buckets = report.get("by_length_bucket", {})
    lr, sr = buckets.get("longretriever", {}), buckets.get("sasrec", {})
    keys = [k for k in lr if k in sr]
    if len(keys) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(len(keys))
    for m, b in buckets.items():
        if all(k in b for k in keys):
            ax.plot(x, [b[k][metric] for k in keys], marker="o", label=m)
    ax.set_xticks(x, [f"{k}\n(n={lr[k]['users']})" for k in keys], fontsize=8)
    ax.set_xlabel("events in the user's history"), ax.set_ylabel(metric), ax.grid(alpha=.3)
    ax.set_title(f"{metric} by history length"), ax.legend(fontsize=7)
    ratio = [lr[k][metric] / sr[k][metric] if sr[k][metric] > 0 else np.nan for k in keys]
    ax2.bar(x, ratio, color="tab:green")
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_xticks(x, keys, fontsize=8), ax2.set_xlabel("events in the user's history")
    ax2.set_ylabel("longretriever / sasrec"), ax2.set_title(f"{metric} ratio to SASRec")
    fig.tight_layout()
    path = Path(out_dir) / "by_history_length.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
