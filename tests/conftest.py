"""Shared fixtures: small synthetic datasets and tiny training configs (real files, real training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medattn.config import Config, load_config
from medattn.data.synth import write_synthetic_dataset

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def tiny_config(dataset: Path, run_dir: Path, *overrides: str) -> Config:
    """A config that trains a very small 3-D Attention U-Net in seconds (for behaviour tests)."""
    base = [
        f"data.dataset={dataset}", f"output_dir={run_dir}", "data.num_workers=0", "data.val_fraction=0.25",
        "model.kwargs.channels=[4, 8]", "train.patch_size=[16, 16, 8]", "train.epochs=2",
        "train.samples_per_volume=1", "train.batch_size=2", "train.val_every=1", "infer.sw_batch_size=4",
        "preprocess.target_spacing=[1.6, 1.6, 4.0]",
    ]
    return load_config(None, [*base, *overrides])


@pytest.fixture(scope="session")
def tiny():
    """:func:`tiny_config` as a fixture (test modules cannot import conftest)."""
    return tiny_config


@pytest.fixture(scope="session")
def synth3d(tmp_path_factory) -> Path:
    """A 6-case (4 train + 2 test) 3-D synthetic dataset with oblique, anisotropic geometry."""
    root = tmp_path_factory.mktemp("synth3d")
    return write_synthetic_dataset(root, spatial_dims=3, n_train=4, n_test=2, seed=1)
