"""The evaluator's training jobs (one model of one seed each) run in parallel processes without
changing any number."""

import json

import numpy as np

from longretriever.export.report import MODELS, run_eval
from longretriever.export.train import TrainConfig
from tests.fixtures.data import synthetic


def test_parallel_seeds_give_the_same_report_as_sequential(tmp_path):
    ds = synthetic(n_users=24, n_items=80, seed=3)
    cfg = TrainConfig(epochs=1, batch=32, dim=8, k=8, w=4, heads=2, hidden=16)
    seq = run_eval(ds, tmp_path / "seq", cfg, seeds=2, progress=False, jobs=1)
    par = run_eval(ds, tmp_path / "par", cfg, seeds=2, progress=False, jobs=2)
    timing = ("train_examples_per_s",)  # measured speeds, the only numbers allowed to differ
    assert {k: v for k, v in seq.items() if k not in timing} == {k: v for k, v in par.items() if k not in timing}
    assert set(seq["train_examples_per_s"]) == {"sasrec", "multi_interest", "longretriever"}
    assert set(seq["models"]) == set(MODELS)
    details = json.loads((tmp_path / "par" / "details.json").read_text())
    assert details["jobs"] == 2 and len(details["runs"]) == 2
    # seeds differ from each other (the parallel runs did not all get seed 0)
    losses = [r["loss"]["longretriever"] for r in details["runs"]]
    assert not np.allclose(losses[0], losses[1])
    for r in details["runs"]:
        assert set(r["by_choice"]) == {"frequency", "learned"}
        assert r["notes"]["context_choice"] in ("frequency", "learned")
    md = (tmp_path / "par" / "report.md").read_text()
    assert "## Context choice" in md and "| learned |" in md


def test_include_seen_ranks_seen_items_for_every_model(tmp_path):
    ds = synthetic(n_users=24, n_items=40, seed=5)  # small catalogue: targets are often seen items
    cfg = TrainConfig(epochs=1, batch=32, dim=8, k=8, w=4, heads=2, hidden=16)
    excl = run_eval(ds, tmp_path / "excl", cfg, seeds=1, progress=False, jobs=1)
    incl = run_eval(ds, tmp_path / "incl", cfg, seeds=1, progress=False, jobs=1, exclude_seen=False)
    assert "seen items excluded" in excl["protocol"] and "ranked too" in incl["protocol"]
    # a seen target can only be found when seen items are ranked: popularity (no training) shows it
    assert incl["models"]["popularity"]["recall@50"] > excl["models"]["popularity"]["recall@50"]
    assert incl["models"]["longretriever"] != excl["models"]["longretriever"]
