"""MIL checkpoints: weights_only round trip, task/encoder/config sections, kind checks both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
import support.models  # noqa: F401  (registers the segmentation test model)
import torch
from support.checkpoints import nearest_centre_checkpoint

from medattn.config import load_mil_config
from medattn.engine.checkpoint import load_checkpoint, save_checkpoint
from medattn.engine.mil_checkpoint import load_mil_checkpoint, save_mil_checkpoint
from medattn.engine.predictor import Predictor
from medattn.errors import CheckpointError
from medattn.models.abmil import GatedABMIL


def _cfg(*overrides: str):
    return load_mil_config(None, ["data.classes=[normal,tumour]", "patch.size=128", "slide.mpp=0.5",
                                  "infer.heatmap_scaling=minmax", *overrides])


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GatedABMIL(in_dim=12, embed_dim=8, attention_dim=4, n_outputs=2, dropout=0.1)
    path = save_mil_checkpoint(tmp_path / "m.pt", model, _cfg(),
                               {"classes": ["normal", "tumour"]},
                               {"name": "handcrafted", "version": "2", "dim": 12},
                               extra={"fold": 1, "seed": 3})
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["kind"] == "mil" and raw["fold"] == 1 and raw["seed"] == 3
    assert raw["model"] == {"name": "abmil", "kwargs": {"in_dim": 12, "embed_dim": 8, "attention_dim": 4,
                                                        "n_outputs": 2, "dropout": 0.1, "gated": True}}
    assert raw["encoder"]["version"] == "2" and raw["encoder"]["dim"] == 12
    assert raw["patch"]["size"] == 128 and raw["config"]["slide"]["mpp"] == 0.5
    mil = load_mil_checkpoint(path)
    assert not mil.model.training
    assert mil.classes == ["normal", "tumour"] and mil.output_names == ["p_normal", "p_tumour"]
    assert mil.patch.size == 128 and mil.slide.mpp == 0.5 and mil.infer.heatmap_scaling == "minmax"
    assert mil.config.patch.size == 128 and len(mil.sha256) == 64
    x = torch.randn(1, 9, 12)
    with torch.no_grad():
        expected = model.eval()(x)["logits"]
        got = mil.model(x)["logits"]
    torch.testing.assert_close(got, expected)
    assert mil.outputs(got).sum().item() == pytest.approx(1.0)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_survival_task_with_numpy_bin_edges(tmp_path: Path) -> None:
    import numpy as np

    model = GatedABMIL(in_dim=4, embed_dim=4, attention_dim=2, n_outputs=3)
    cfg = _cfg("task.type=survival", "task.n_bins=3")
    edges = np.array([0.0, 1.5, 3.0, 9.0])
    path = save_mil_checkpoint(tmp_path / "s.pt", model, cfg, {"bin_edges": edges}, {})
    mil = load_mil_checkpoint(path)
    assert mil.task["bin_edges"] == [0.0, 1.5, 3.0, 9.0] and mil.task["survival_loss"] == "nll"
    assert mil.output_names == ["risk"]
    assert mil.outputs(torch.zeros(2, 3)).shape == (2, 1)


def test_segmentation_and_mil_checkpoints_are_not_confused(tmp_path: Path) -> None:
    seg = nearest_centre_checkpoint(tmp_path / "seg.pt")
    with pytest.raises(CheckpointError, match="segmentation checkpoint, not a MIL"):
        load_mil_checkpoint(seg)
    mil = save_mil_checkpoint(tmp_path / "mil.pt", GatedABMIL(in_dim=4), _cfg(), {}, {})
    with pytest.raises(CheckpointError, match="mil checkpoint, not a segmentation"):
        Predictor(mil)


def test_weights_that_do_not_fit_raise_checkpoint_error(tmp_path: Path) -> None:
    path = save_mil_checkpoint(tmp_path / "m.pt", GatedABMIL(in_dim=4), _cfg(), {}, {})
    ckpt = load_checkpoint(path)
    ckpt["model"]["kwargs"]["in_dim"] = 5
    save_checkpoint(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: cannot rebuild the MIL model"):
        load_mil_checkpoint(tmp_path / "bad.pt")
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"trunc\.pt"):
        load_mil_checkpoint(tmp_path / "trunc.pt")
