"""Writing model bundles: the trained torch model -> ONNX encoder + item vectors + metadata +
a sha256 manifest, in the layout :mod:`longretriever.core.bundle` reads and verifies."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from longretriever.core.bundle import FORMAT_VERSION, OUTPUT_NAME, PREDICTOR_FILE, files_digest, sha256_file
from longretriever.core.context_predictor import ContextPredictor
from longretriever.core.errors import BundleError
from longretriever.core.features import INPUT_NAMES, ItemVocab, build_encoder_inputs
from longretriever.core.multicontext import CONTEXT_CHOICES


def export_onnx(model, path: Path, vocab: ItemVocab, k: int, w: int) -> None:
    """torch.onnx.export (TorchScript exporter, opset 17) with dynamic batch/sequence axes."""
    import torch

    model.eval()
    raw = vocab.item_ids
    rows = [raw[: min(3, raw.size)], raw[:0]]
    inputs = build_encoder_inputs(rows, rows[::-1], [0, 0], vocab, k, w)
    args = tuple(torch.as_tensor(inputs[n]) for n in INPUT_NAMES)
    dyn: dict[str, dict[int, str]] = {n: {0: "batch"} for n in INPUT_NAMES}
    for n in ("ctx_items", "ctx_age", "ctx_mask"):
        dyn[n][1] = "seq"
    for n in ("recent_items", "recent_age", "recent_mask"):
        dyn[n][1] = "recent"
    dyn[OUTPUT_NAME] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(model, args, str(path), input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], dynamic_axes=dyn, opset_version=17,
                          dynamo=False, do_constant_folding=True)


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def save_bundle(out_dir: Path | str, model, vocab: ItemVocab, item_contexts: np.ndarray,
                context_names: Sequence[str], popularity: np.ndarray, config: dict[str, Any],
                metrics: dict[str, Any] | None = None, quantize: str | None = None,
                predictor: ContextPredictor | None = None) -> Path:
    """Write a complete bundle to ``out_dir`` (replaced atomically if it exists) and return
    it. ``config`` must hold ``k`` and ``w``; ``dim``/``tau`` are filled from the model;
    ``config["context_choice"]`` (default "frequency") is the choice serving applies, and
    "learned" needs ``predictor``."""
    import torch

    out_dir = Path(out_dir)
    model = model.to("cpu")  # a model trained on a GPU exports from the CPU
    if quantize not in (None, "int8"):
        raise BundleError(f"unsupported quantisation {quantize!r}; use int8")
    if "k" not in config or "w" not in config:
        raise BundleError("bundle config needs k and w")
    config = {"context_choice": "frequency", **config}
    if config["context_choice"] not in CONTEXT_CHOICES:
        raise BundleError(f"context_choice must be one of {CONTEXT_CHOICES}, got {config['context_choice']!r}")
    if config["context_choice"] == "learned" and predictor is None:
        raise BundleError("context_choice 'learned' needs a context predictor")
    if predictor is not None and predictor.num_contexts != len(context_names):
        raise BundleError(f"context predictor has {predictor.num_contexts} contexts, bundle {len(context_names)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        export_onnx(model, tmp / "encoder.onnx", vocab, int(config["k"]), int(config["w"]))
        if quantize == "int8":
            quantize_int8(tmp / "encoder.onnx", tmp / "encoder.int8.onnx")
        with torch.no_grad():
            emb = model.all_item_vectors().numpy().astype(np.float32)
        np.save(tmp / "item_embeddings.npy", emb)
        torch.save(model.state_dict(), tmp / "model.pt")  # eager weights (benchmarks, fine-tuning)
        np.save(tmp / "item_ids.npy", vocab.item_ids.astype(np.int64))
        np.save(tmp / "item_contexts.npy", np.asarray(item_contexts, np.int32))
        np.save(tmp / "popularity.npy", np.asarray(popularity, np.float64))
        (tmp / "contexts.json").write_text(json.dumps({"names": list(context_names)}, indent=1))
        if predictor is not None:
            (tmp / PREDICTOR_FILE).write_text(predictor.to_json())
        cfg = {"format_version": FORMAT_VERSION, "dim": int(emb.shape[1]),
               "tau": float(model.cfg.tau), "model": model.cfg.to_dict(),
               "input_names": list(INPUT_NAMES), "output_name": OUTPUT_NAME, **config}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True, default=str))
        (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=1, sort_keys=True, default=str))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        digest = files_digest(files)
        version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + digest
        manifest = {"version": version, "format_version": FORMAT_VERSION,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
