"""Tiny synthetic set end to end: ``eval`` trains every model and writes the report in the
exact schema; ``train --quantize int8`` exports a bundle whose int8 encoder agrees with fp32."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from longretriever.retriever.bundle import load_bundle
from longretriever.benchmarks.common import train_small
from longretriever.data.synth import write as write_synth

MODELS = {"popularity", "sasrec", "multi_interest", "longretriever"}
METRICS = {"hr@10", "ndcg@10", "recall@50", "recall@100", "recall@200"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    ev, it = write_synth(d / "syn.csv", users=40, events_per_user=120, items=800, contexts=5, seed=2)
    return d, ev, it


def test_eval_writes_report_in_schema(tiny):
    d, ev, it = tiny
    out = d / "report"
    subprocess.run([sys.executable, "-m", "longretriever.cli", "eval", "--events", str(ev), "--items", str(it),
                    "--out", str(out), "--epochs", "1", "--seeds", "1", "--budget", "16", "--k", "32",
                    "--w", "8"], check=True, capture_output=True, timeout=600)
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) == {"dataset", "protocol", "models", "by_length_quartile", "by_length_bucket",
                        "train_examples_per_s", "fraction_of_oracle"}
    assert set(rep["models"]) == MODELS | {"oracle"}  # a synth set carries its ceiling
    assert set(rep["by_length_quartile"]) == MODELS | {"oracle"}
    for m in MODELS | {"oracle"}:
        assert set(rep["models"][m]) == METRICS
        assert all(0.0 <= v <= 1.0 for v in rep["models"][m].values())
        assert len(rep["by_length_quartile"][m]) == 4
        r = rep["models"][m]
        assert r["recall@50"] <= r["recall@100"] <= r["recall@200"]
    assert rep["models"]["oracle"]["recall@100"] > rep["models"]["popularity"]["recall@100"]
    for m in MODELS:
        frac = rep["fraction_of_oracle"][m]["recall@100"]
        assert frac == pytest.approx(rep["models"][m]["recall@100"] / rep["models"]["oracle"]["recall@100"])
    assert set(rep["train_examples_per_s"]) == MODELS - {"popularity"}
    assert all(v > 0 for v in rep["train_examples_per_s"].values())
    # (no quality bar here: 40 users of 120 events, one epoch)
    assert (out / "report.md").read_text().count("±") >= 4
    assert len(list(out.glob("*.png"))) >= 3


def test_int8_bundle_agrees_with_fp32(tiny):
    d, ev, it = tiny
    train_small(ev, it, d / "bundle", budget=16, k=32, w=8, extra=("--quantize", "int8"))
    fp32 = load_bundle(d / "bundle", intra_op_threads=1)
    int8 = load_bundle(d / "bundle", intra_op_threads=1, int8=True)
    rng = np.random.default_rng(0)
    ids = fp32.item_ids
    ctx = [rng.choice(ids, size=int(rng.integers(0, 32))) for _ in range(64)]
    rec = [rng.choice(ids, size=8) for _ in range(64)]
    cs = [int(c) for c in rng.integers(1, len(fp32.context_names), 64)]
    a, b = fp32.encode(ctx, rec, cs), int8.encode(ctx, rec, cs)
    cos = (a * b).sum(1)
    assert cos.min() > 0.99


def test_learned_contexts_when_no_categories(tiny):
    d, ev, _ = tiny
    train_small(ev, None, d / "learned", budget=8, k=32, w=8, extra=("--contexts", "4"))
    b = load_bundle(d / "learned", intra_op_threads=1)
    assert list(b.context_names) == ["unknown", "k00", "k01", "k02", "k03"]
    used = set(np.unique(b.item_contexts).tolist())
    assert used <= {1, 2, 3, 4} and len(used) >= 2  # every item in exactly one learned context
