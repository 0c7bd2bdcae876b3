"""The report's figures: titled, seed error bars, readable recall@K axis, one loss panel per
model (each objective on its own scale)."""

from __future__ import annotations

import numpy as np

from longretriever.export.plots import KS, loss_figure, quartile_figure, recall_figure, write_plots

MODELS = ("popularity", "sasrec", "multi_interest", "longretriever")


def _runs(seeds=3, epochs=4):
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(seeds):
        models = {m: {"hr@10": rng.uniform(0, .1), "recall@50": rng.uniform(.1, .2),
                      "recall@100": rng.uniform(.2, .3), "recall@200": rng.uniform(.3, .4)} for m in MODELS}
        quart = {m: [{"recall@100": rng.uniform(0, .4)} for _ in range(4)] for m in MODELS}
        loss = {m: list(rng.uniform(1, 5, epochs)) for m in MODELS[1:]}
        runs.append({"models": models, "quartiles": quart, "loss": loss})
    report = {"dataset": "ml-test", "models": {m: {} for m in MODELS}}
    return report, runs


def test_recall_figure():
    report, runs = _runs()
    ax = recall_figure(report, runs).axes[0]
    assert "ml-test" in ax.get_title() and "3 seeds" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in KS]
    assert ax.get_xlabel() and ax.get_ylabel() == "recall@K"
    assert len(ax.containers) == len(MODELS)  # one errorbar container per model
    bars = ax.containers[3]  # longretriever: the error bars span the seeds' std
    want = np.std([r["models"]["longretriever"]["recall@100"] for r in runs])
    seg = bars.lines[2][0].get_segments()[2]
    assert np.isclose((seg[1][1] - seg[0][1]) / 2, want)


def test_quartile_and_loss_figures():
    report, runs = _runs()
    ax = quartile_figure(report, runs).axes[0]
    assert ax.get_title() and len([c for c in ax.containers if hasattr(c, "patches")]) == len(MODELS)
    assert any(c.__class__.__name__ == "ErrorbarContainer" for c in ax.containers)
    fig = loss_figure(report, runs)
    assert len(fig.axes) == 3 and len({a.get_title() for a in fig.axes}) == 3  # a panel per objective
    assert fig._suptitle is not None and "3 seeds" in fig._suptitle.get_text()


def test_write_plots(tmp_path):
    report, runs = _runs(seeds=1, epochs=2)
    paths = write_plots(tmp_path, report, runs)
    assert [p.name for p in paths] == ["recall_at_k.png", "by_length_quartile.png", "training_loss.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
