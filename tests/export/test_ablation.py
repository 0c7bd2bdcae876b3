"""The ablation runner retrains each variant and scores the serving variants."""

import json

from longretriever.export.ablation import SASREC, SERVING, run_ablation
from longretriever.export.train import TrainConfig
from tests.fixtures.data import synthetic


def test_ablation_report(tmp_path):
    ds = synthetic(n_users=20, n_items=80, seed=4)
    cfg = TrainConfig(epochs=1, batch=32, dim=8, k=8, w=4, heads=2, hidden=16)
    variants = {"full": {}, "K=0 (no hard search)": {"k": 0}, "W=0 (no recent window)": {"w": 0}}
    res = run_ablation(ds, tmp_path, cfg, seeds=1, jobs=1, variants=variants)
    assert set(res["summary"]) == set(variants) | set(SERVING) | {SASREC}
    for m in res["summary"].values():
        assert 0.0 <= m["hr@10"] <= m["recall@50"] <= m["recall@100"] <= m["recall@200"] <= 1.0
        assert 0.0 <= m["recall@100 Q4"] <= 1.0
    # each variant was trained with its own setting, the rest as the full model
    cfgs = {r["variant"]: r["config"] for r in res["runs"]}
    assert (cfgs["full"]["k"], cfgs["full"]["w"]) == (8, 4)
    assert (cfgs["K=0 (no hard search)"]["k"], cfgs["K=0 (no hard search)"]["w"]) == (0, 4)
    assert (cfgs["W=0 (no recent window)"]["k"], cfgs["W=0 (no recent window)"]["w"]) == (8, 0)
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["summary"] == res["summary"]
    md = (tmp_path / "ablation.md").read_text()
    assert "| K=0 (no hard search) |" in md and "| M=1 |" in md


def test_ablation_with_seen_items_scores_repeats(tmp_path):
    """With seen items included, a target the user already had can be a hit; with them
    excluded it never is, so including them can only help on repeat-heavy data."""
    ds = synthetic(n_users=20, n_items=24, seed=6)  # few items: most targets are repeats
    cfg = TrainConfig(epochs=1, batch=32, dim=8, k=8, w=4, heads=2, hidden=16)
    v = {"full": {}}
    incl = run_ablation(ds, tmp_path / "i", cfg, variants=v, jobs=1, exclude_seen=False)
    excl = run_ablation(ds, tmp_path / "e", cfg, variants=v, jobs=1)
    for row in ("full", SASREC):
        assert incl["summary"][row]["recall@200"] > excl["summary"][row]["recall@200"]
    assert "seen items included" in (tmp_path / "i" / "ablation.md").read_text()
