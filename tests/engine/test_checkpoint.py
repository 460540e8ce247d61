"""Checkpoints: atomic, weights_only loadable, clear errors for bad files, RNG capture."""

import random

import numpy as np
import pytest
import torch

from medattn.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from medattn.errors import CheckpointError


def payload():
    return {"model": {"name": "attention_unet", "kwargs": {"channels": [4, 8]}},
            "state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "labels": {"0": "bg", "1": "fg"},
            "spatial_dims": 3, "preprocess": {"orientation": "RAS"}, "patch_size": [8, 8, 8]}


def test_round_trip_with_weights_only(tmp_path):
    p = save_checkpoint(payload(), tmp_path / "c.pt")
    raw = torch.load(p, weights_only=True)
    assert raw["format"] == "medattn-checkpoint" and raw["format_version"] == 1
    ck = load_checkpoint(p)
    assert torch.equal(ck["state_dict"]["w"], torch.arange(6.0).reshape(2, 3))
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]  # no temp files left behind


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    good = save_checkpoint(payload(), tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(cut)
    assert str(e.value).startswith(str(cut)) and "corrupt or truncated" in str(e.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a medattn checkpoint"):
        load_checkpoint(foreign)


def test_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "medattn-checkpoint", "x": np.random.RandomState(0)}, evil)  # arbitrary class
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(evil)


def test_incomplete_checkpoint(tmp_path):
    p = tmp_path / "c.pt"
    torch.save({"format": "medattn-checkpoint", "format_version": 1, "model": {}}, p)
    with pytest.raises(CheckpointError, match="missing state_dict"):
        load_checkpoint(p)


def test_rng_state_survives_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    p = save_checkpoint({**payload(), "rng": capture_rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_checkpoint(p)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
