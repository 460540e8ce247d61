"""A medattn checkpoint of the test model :class:`support.models.NearestCentre` (threshold at 50)."""

from __future__ import annotations

from pathlib import Path

from medattn.engine.checkpoint import save_checkpoint
from support.models import NearestCentre


def nearest_centre_checkpoint(path: Path, spatial_dims: int = 3) -> Path:
    """A one-channel, two-class checkpoint whose model labels voxels above 50 as class 1."""
    kwargs = {"spatial_dims": spatial_dims, "in_channels": 1, "centres": [0.0, 100.0]}
    return save_checkpoint({
        "model": {"name": "test_nearest_centre", "kwargs": kwargs},
        "state_dict": NearestCentre(**kwargs).state_dict(),
        "labels": {"0": "background", "1": "foreground"}, "channels": ["mr"], "spatial_dims": spatial_dims,
        "preprocess": {"orientation": None, "target_spacing": None, "normalization": "none",
                       "zscore_nonzero": True, "ct_window": [-1000.0, 1000.0]},
        "patch_size": [8] * spatial_dims,
        "infer": {"overlap": 0.25, "blend": "gaussian", "tta": False, "sw_batch_size": 2},
    }, path)
