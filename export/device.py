"""Where training runs: ``--device cpu|cuda|auto`` and the torch thread count.

One seed uses every core by default: ``threads = cores // jobs`` (``jobs`` seeds or ablation
variants train in parallel processes). ``auto`` picks CUDA when a GPU is visible."""

from __future__ import annotations

import os

import torch

from longretriever.core.errors import ConfigError

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(spec: str = "cpu") -> torch.device:
    if spec not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {spec!r}")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch (use --device cpu or auto)")
    return torch.device(spec)


def default_threads(jobs: int = 1) -> int:
    """Intra-op threads per training process: the machine's cores shared by ``jobs`` processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))
