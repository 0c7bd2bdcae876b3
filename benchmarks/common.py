"""A small bundle trained in a subprocess (own torch threads, own memory), for benchmarks,
the demo and tests that need a real encoder but not a good one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def train_small(events: Path, items: Path | None, out: Path, *, epochs: int = 1, budget: int = 8,
                k: int = 64, w: int = 16, extra: tuple[str, ...] = ()) -> Path:
    cmd = [sys.executable, "-m", "longretriever.cli", "train", "--events", str(events), "--out", str(out),
           "--epochs", str(epochs), "--budget", str(budget), "--k", str(k), "--w", str(w), "--no-progress",
           *extra]
    if items is not None:
        cmd += ["--items", str(items)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out
