"""Model bundles: a directory with the ONNX user encoder, precomputed item vectors and the
metadata serving needs, plus a manifest of sha256 digests that :func:`load_bundle` verifies.

Layout::

    encoder.onnx          user tower (inputs: longretriever.core.features.INPUT_NAMES, output user_vector)
    encoder.int8.onnx     optional, dynamic int8 quantisation of the same graph
    item_embeddings.npy   float32 [N, d], item tower output (L2-normalised)
    item_ids.npy          int64 [N] raw ids, sorted ascending (row i <-> dense index i)
    item_contexts.npy     int32 [N]
    popularity.npy        float64 [N] training-target counts
    contexts.json         {"names": [...]}  (id = position; 0 = unknown/all)
    context_predictor.json  optional learned next-context predictor (multinomial logistic)
    config.json           k, w, dim, tau, context_choice ("frequency" | "learned"), model/train settings
    metrics.json          whatever the trainer measured
    model.pt              torch state dict of the same model (not needed for serving)
    manifest.json         {"version": ..., "created": ..., "files": {name: sha256}}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from longretriever.core.features import INPUT_NAMES, ItemVocab, build_encoder_inputs
from longretriever.core.context_predictor import ContextPredictor
from longretriever.core.errors import BundleError, InputError
from longretriever.core.multicontext import CONTEXT_CHOICES

FORMAT_VERSION = 1
OUTPUT_NAME = "user_vector"
REQUIRED = ("encoder.onnx", "item_embeddings.npy", "item_ids.npy", "item_contexts.npy",
            "popularity.npy", "contexts.json", "config.json", "metrics.json")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
            (tmp / "context_predictor.json").write_text(predictor.to_json())
        cfg = {"format_version": FORMAT_VERSION, "dim": int(emb.shape[1]),
               "tau": float(model.cfg.tau), "model": model.cfg.to_dict(),
               "input_names": list(INPUT_NAMES), "output_name": OUTPUT_NAME, **config}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True, default=str))
        (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=1, sort_keys=True, default=str))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
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


@dataclass
class Bundle:
    path: Path
    version: str
    item_ids: np.ndarray
    item_contexts: np.ndarray
    item_embeddings: np.ndarray
    popularity: np.ndarray
    context_names: tuple[str, ...]
    config: dict[str, Any]
    metrics: dict[str, Any]
    session: Any  # onnxruntime.InferenceSession
    vocab: ItemVocab = field(repr=False)
    context_items: dict[int, np.ndarray] = field(repr=False)  # context -> dense indices
    predictor: ContextPredictor | None = field(default=None, repr=False)

    @property
    def context_choice(self) -> str:
        """The context choice this bundle was trained and evaluated with."""
        return str(self.config.get("context_choice", "frequency"))

    def context_scorer(self, choice: str | None = None) -> ContextPredictor | None:
        """The scorer for ``choice`` (None = the bundle's own): None means recency-weighted
        frequency; "learned" is the bundle's predictor."""
        choice = choice or self.context_choice
        if choice not in CONTEXT_CHOICES:
            raise InputError(f"context choice must be one of {CONTEXT_CHOICES}, got {choice!r}")
        if choice == "frequency":
            return None
        if self.predictor is None:
            raise BundleError(f"{self.path}: context choice 'learned' but the bundle has no "
                              "context_predictor.json (retrain with this version)")
        return self.predictor

    @property
    def k(self) -> int:
        return int(self.config["k"])

    @property
    def w(self) -> int:
        return int(self.config["w"])

    @property
    def dim(self) -> int:
        return int(self.item_embeddings.shape[1])

    def inputs(self, ctx_items: list[np.ndarray], recent_items: list[np.ndarray],
               contexts: list[int] | np.ndarray) -> dict[str, np.ndarray]:
        return build_encoder_inputs(ctx_items, recent_items, contexts, self.vocab, self.k, self.w)

    def encode(self, ctx_items: list[np.ndarray], recent_items: list[np.ndarray],
               contexts: list[int] | np.ndarray) -> np.ndarray:
        """Raw-id rows (oldest first) -> float32 [B, d] L2-normalised user vectors."""
        if len(ctx_items) == 0:
            return np.zeros((0, self.dim), np.float32)
        ctx = np.asarray(contexts, dtype=np.int64).reshape(-1)
        if ctx.size and (ctx.min() < 0 or ctx.max() >= len(self.context_names)):
            raise InputError(f"context id out of range 0..{len(self.context_names) - 1}: "
                             f"{ctx[(ctx < 0) | (ctx >= len(self.context_names))][:5].tolist()}")
        feeds = self.inputs(ctx_items, recent_items, ctx)
        return np.asarray(self.session.run([OUTPUT_NAME], feeds)[0], dtype=np.float32)

    def popular(self, context: int | None, n: int) -> np.ndarray:
        """Raw ids of the ``n`` most popular items of ``context`` (all items when None),
        most popular first, ties by smaller raw id."""
        idx = np.arange(self.item_ids.size) if context is None else self.context_items.get(int(context))
        if idx is None or idx.size == 0 or n <= 0:
            return np.zeros(0, np.int64)
        order = np.lexsort((self.item_ids[idx], -self.popularity[idx]))[:n]
        return self.item_ids[idx[order]]


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / "manifest.json"
    if not path.is_dir():
        raise BundleError(f"bundle directory not found: {path}")
    if not mpath.is_file():
        raise BundleError(f"{path}: manifest.json missing; not a bundle")
    try:
        manifest = json.loads(mpath.read_text())
        manifest["files"].items()  # both keys must exist, files must be a mapping
        str(manifest["version"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{mpath}: unreadable manifest ({exc})") from exc
    return manifest


def verify_bundle(path: Path | str) -> dict[str, Any]:
    """Check every file listed in the manifest (and that the required ones are listed)."""
    path = Path(path)
    manifest = _read_manifest(path)
    files = manifest["files"]
    missing = [n for n in REQUIRED if n not in files]
    if missing:
        raise BundleError(f"{path}: manifest does not list required file(s) {', '.join(missing)}")
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
    if not str(manifest["version"]).endswith("-" + digest):
        raise BundleError(f"{path}: manifest version {manifest['version']!r} does not match its file "
                          f"list (expected suffix -{digest}); the manifest was edited")
    unexpected = sorted(p.name for p in path.iterdir() if p.name != "manifest.json" and p.name not in files)
    if unexpected:
        raise BundleError(f"{path}: file(s) not in the manifest: {', '.join(unexpected)}; "
                          "a bundle is exactly what its manifest lists")
    for name, want in sorted(files.items()):
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: file {name} listed in manifest is missing")
        got = sha256_file(f)
        if got != want:
            raise BundleError(f"{path}: sha256 mismatch for {name} (manifest {want[:12]}..., "
                              f"file {got[:12]}...); the bundle was modified or is corrupt")
    return manifest


def load_bundle(path: Path | str, intra_op_threads: int = 2, int8: bool = False) -> Bundle:
    """Verify and load a bundle. ``int8`` selects encoder.int8.onnx (must exist)."""
    import onnxruntime as ort

    path = Path(path)
    manifest = verify_bundle(path)
    try:
        config = json.loads((path / "config.json").read_text())
        metrics = json.loads((path / "metrics.json").read_text())
        names = tuple(json.loads((path / "contexts.json").read_text())["names"])
        item_ids = np.load(path / "item_ids.npy", allow_pickle=False)
        item_ctx = np.load(path / "item_contexts.npy", allow_pickle=False).astype(np.int32)
        emb = np.load(path / "item_embeddings.npy", allow_pickle=False).astype(np.float32)
        pop = np.load(path / "popularity.npy", allow_pickle=False)
    except (ValueError, KeyError, OSError) as exc:
        raise BundleError(f"{path}: cannot read bundle contents ({exc})") from exc
    if not (item_ids.shape[0] == item_ctx.shape[0] == emb.shape[0] == pop.shape[0]):
        raise BundleError(f"{path}: item arrays disagree in length")
    enc = "encoder.int8.onnx" if int8 else "encoder.onnx"
    if enc not in manifest["files"]:
        raise BundleError(f"{path}: {enc} not in bundle (train with --quantize int8)")
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(intra_op_threads))
    so.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path / enc), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{path}: cannot load {enc}: {exc}") from exc
    predictor = None
    if "context_predictor.json" in manifest["files"]:
        predictor = ContextPredictor.from_json((path / "context_predictor.json").read_text())
        if predictor.num_contexts != len(names):
            raise BundleError(f"{path}: context predictor has {predictor.num_contexts} contexts, "
                              f"contexts.json {len(names)}")
    if config.get("context_choice", "frequency") not in CONTEXT_CHOICES:
        raise BundleError(f"{path}: unknown context_choice {config.get('context_choice')!r}")
    order = np.argsort(item_ctx, kind="stable")
    bounds = np.flatnonzero(np.diff(item_ctx[order])) + 1
    ctx_items = {int(item_ctx[ch[0]]): ch for ch in np.split(order, bounds) if ch.size}
    b = Bundle(path, str(manifest["version"]), item_ids.astype(np.int64), item_ctx, emb, pop,
               names, config, metrics, sess, ItemVocab(item_ids.astype(np.int64)), ctx_items, predictor)
    b.context_scorer()  # a "learned" bundle without its predictor is refused at load
    return b
