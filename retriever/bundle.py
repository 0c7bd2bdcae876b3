"""Loading a verified model bundle for serving: :func:`longretriever.core.bundle.read_bundle`
with an onnxruntime session (CPU; the serving process never imports torch)."""

from __future__ import annotations

from pathlib import Path

from longretriever.core.bundle import Bundle, read_bundle


def onnx_session(path: Path, intra_op_threads: int = 2):
    """An onnxruntime CPU session with ``intra_op_threads`` threads and one inter-op thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(intra_op_threads))
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_bundle(path: Path | str, intra_op_threads: int = 2, int8: bool = False) -> Bundle:
    """Verify and load a bundle. ``int8`` selects encoder.int8.onnx (must exist)."""
    return read_bundle(path, lambda p: onnx_session(p, intra_op_threads), int8)
