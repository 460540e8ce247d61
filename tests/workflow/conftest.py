"""Workflow test helpers: a tiny synth → train → infer → evaluate workflow written as a real YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

TINY_TRAIN = ["data.num_workers=0", "data.val_fraction=0.25", "model.kwargs.channels=[4, 8]",
              "train.patch_size=[16, 16, 8]", "train.epochs=2", "train.samples_per_volume=1", "train.batch_size=2",
              "train.val_every=1", "infer.sw_batch_size=4", "preprocess.target_spacing=[1.6, 1.6, 4.0]"]


def tiny_stages(epochs: int = 2) -> list[dict[str, Any]]:
    """The stages of a workflow that runs in seconds (4 + 2 phantoms, a 2-level Attention U-Net)."""
    return [
        {"name": "data", "kind": "synth", "params": {"n_train": 4, "n_test": 2, "seed": 1}},
        {"name": "model", "kind": "train", "set": [*TINY_TRAIN, f"train.epochs={epochs}"],
         "inputs": {"dataset": "@data/dataset.json"}},
        {"name": "predictions", "kind": "infer",
         "inputs": {"checkpoint": "@model/checkpoints/best.pt", "images": "@data/imagesTs"}},
        {"name": "evaluation", "kind": "evaluate", "params": {"nsd_tolerance": 1.0},
         "inputs": {"predictions": "@predictions", "references": "@data/labelsTs", "labels": "@data/dataset.json"}},
    ]


def write_workflow(path: Path, stages: list[dict[str, Any]], name: str = "tiny") -> Path:
    """Write ``stages`` as a workflow file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": name, "stages": stages}, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def wf_helpers():
    """(tiny_stages, write_workflow) for test modules (they cannot import conftest)."""
    return tiny_stages, write_workflow
