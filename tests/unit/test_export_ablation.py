"""The ablation runner retrains each variant and scores the serving variants."""

import json

from export.ablation import SERVING, run_ablation
from export.train import TrainConfig
from tests.unit.test_export_bundle import synthetic


def test_ablation_report(tmp_path):
    ds = synthetic(n_users=20, n_items=80, seed=4)
    cfg = TrainConfig(epochs=1, batch=32, dim=8, k=8, w=4, n_ctx_neg=4, heads=2, hidden=16)
    variants = {"full": {}, "K=0 (no hard search)": {"k": 0}, "W=0 (no recent window)": {"w": 0}}
    res = run_ablation(ds, tmp_path, cfg, seeds=1, jobs=1, variants=variants)
    assert set(res["summary"]) == set(variants) | set(SERVING)
    for m in res["summary"].values():
        assert 0.0 <= m["hr@10"] <= m["recall@50"] <= m["recall@100"] <= m["recall@200"] <= 1.0
    # each variant was trained with its own setting, the rest as the full model
    cfgs = {r["variant"]: r["config"] for r in res["runs"]}
    assert (cfgs["full"]["k"], cfgs["full"]["w"]) == (8, 4)
    assert (cfgs["K=0 (no hard search)"]["k"], cfgs["K=0 (no hard search)"]["w"]) == (0, 4)
    assert (cfgs["W=0 (no recent window)"]["k"], cfgs["W=0 (no recent window)"]["w"]) == (8, 0)
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["summary"] == res["summary"]
    md = (tmp_path / "ablation.md").read_text()
    assert "| K=0 (no hard search) |" in md and "| M=1 |" in md
