"""--device cpu|cuda|auto and the thread share per training process; a GPU run when one is present."""

import os

import numpy as np
import pytest
import torch

from longretriever.core.errors import ConfigError
from longretriever.export.device import default_threads, resolve_device
from longretriever.export.train import TrainConfig, make_split, train_longretriever
from tests.fixtures.data import synthetic


def test_auto_is_cuda_only_when_a_gpu_is_visible():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")


def test_threads_share_the_cores_between_jobs():
    cores = len(os.sched_getaffinity(0))
    assert default_threads(1) == cores
    assert default_threads(cores) == 1
    assert default_threads(10 * cores) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_training_on_the_gpu_matches_the_cpu_run_closely():
    split = make_split(synthetic())
    cfg = TrainConfig(epochs=1, dim=16, hidden=32, heads=2, budget=8)
    cpu = train_longretriever(split, TrainConfig(**{**cfg.to_dict(), "device": "cpu"}), progress=False)
    gpu = train_longretriever(split, TrainConfig(**{**cfg.to_dict(), "device": "cuda"}), progress=False)
    assert np.isfinite(gpu.losses).all()
    assert abs(gpu.losses[0] - cpu.losses[0]) < 0.05 * abs(cpu.losses[0])
