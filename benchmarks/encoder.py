"""``longretriever bench encoder``: one encoder call at batch 1/8/64, eager torch vs onnxruntime
fp32 vs onnxruntime dynamic int8, on a real bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from longretriever.core.bundle import OUTPUT_NAME
from longretriever.export.bundle_writer import quantize_int8
from longretriever.export.model import eager_encoder
from longretriever.retriever.bundle import load_bundle


def bench_encoder(bundle_path: Path, out: Path, seq_len: int = 256, batches=(1, 8, 64),
                  repeats: int = 30, threads: int = 2) -> dict:
    """Median latency of one encoder call on random rows of ``seq_len`` searched items (W =
    bundle w): eager torch (from the bundle's ``model.pt``) vs ORT fp32 vs ORT dynamic int8
    (the bundle's encoder.int8.onnx, or a temporary quantisation next to ``out``)."""
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
    eager = eager_encoder(b.path / "model.pt", b.config["model"], b.item_contexts, threads)

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
        torch_ms = timeit(lambda: eager(feeds))[0] if eager is not None else None
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
