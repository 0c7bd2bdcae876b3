"""The README's main job, as a short smoke run: Kafka -> state -> train -> Milvus -> gRPC."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_small_runs_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "longretriever.cli", "demo", "--synthetic", "--small",
                          "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    applied = re.search(r"stream worker applied ([\d,]+) events", text)
    assert applied and int(applied.group(1).replace(",", "")) == 12_000
    assert "gRPC endpoint on 127.0.0.1" in text
    assert len(re.findall(r"user \d+: top-20 over \d+ contexts", text)) == 3
    assert "shut down" in text
