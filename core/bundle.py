"""The model bundle *reader* contract: layout, manifest verification and the :class:`Bundle`
that offline evaluation and serving read. Pure of any framework: the encoder session is
passed in (:class:`EncoderSession`; onnxruntime in :mod:`longretriever.retriever.bundle`), the
writer (torch -> ONNX) is :mod:`longretriever.export.bundle_writer`.

A bundle is a directory with the ONNX user encoder, precomputed item vectors and the
metadata serving needs, plus a manifest of sha256 digests that :func:`read_bundle` verifies.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from longretriever.core.features import ItemVocab, build_encoder_inputs
from longretriever.core.context_predictor import ContextPredictor
from longretriever.core.errors import BundleError, InputError
from longretriever.core.multicontext import CHOICE_OPTIONS, CONTEXT_CHOICES

FORMAT_VERSION = 1
OUTPUT_NAME = "user_vector"
REQUIRED = ("encoder.onnx", "item_embeddings.npy", "item_ids.npy", "item_contexts.npy",
            "popularity.npy", "contexts.json", "config.json", "metrics.json")


PREDICTOR_FILE = "context_predictor.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_digest(files: Mapping[str, str]) -> str:
    """The short digest of a manifest's file list; a bundle version ends with ``-<digest>``."""
    return hashlib.sha256(json.dumps(dict(files), sort_keys=True).encode()).hexdigest()[:12]


class EncoderSession(Protocol):
    """What a bundle needs of an inference session (``onnxruntime.InferenceSession`` fits)."""

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


SessionFactory = Callable[[Path], EncoderSession]


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
    session: EncoderSession
    vocab: ItemVocab = field(repr=False)
    context_items: dict[int, np.ndarray] = field(repr=False)  # context -> dense indices
    predictor: ContextPredictor | None = field(default=None, repr=False)

    @property
    def context_choice(self) -> str:
        """The context choice this bundle was trained and evaluated with."""
        return str(self.config.get("context_choice", "frequency"))

    def context_scorer(self, choice: str | None = None) -> ContextPredictor | None:
        """The scorer for ``choice`` (None or "auto" = the bundle's own): None means
        recency-weighted frequency; "learned" is the bundle's predictor."""
        if choice not in (None, *CHOICE_OPTIONS):
            raise InputError(f"context choice must be one of {', '.join(CHOICE_OPTIONS)}, got {choice!r}")
        choice = self.context_choice if choice in (None, "auto") else choice
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
    digest = files_digest(files)
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


def read_bundle(path: Path | str, session_factory: SessionFactory, int8: bool = False) -> Bundle:
    """Verify and read a bundle; ``session_factory(encoder_file)`` opens the encoder.
    ``int8`` selects encoder.int8.onnx (must exist)."""
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
    try:
        sess = session_factory(path / enc)
    except BundleError:
        raise
    except Exception as exc:  # inference runtimes raise their own exception types
        raise BundleError(f"{path}: cannot load {enc}: {exc}") from exc
    predictor = None
    if PREDICTOR_FILE in manifest["files"]:
        predictor = ContextPredictor.from_json((path / PREDICTOR_FILE).read_text())
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
