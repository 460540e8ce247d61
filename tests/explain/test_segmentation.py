"""Gate maps and occlusion sensitivity on the Predictor's preprocessed grid (real models, real files)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.checkpoints import nearest_centre_checkpoint

from medattn.engine.predictor import Predictor
from medattn.engine.trainer import train
from medattn.errors import ConfigError, DataError
from medattn.explain.segmentation import explain_case, load_explanation, save_explanation, slice_overlays_png
from medattn.io import write_image
from medattn.io.geometry import Geometry

SHAPE = (24, 20, 16)


def _cube_image(path: Path) -> Path:
    """Intensity 100 in the cube [4:10, 4:10, 4:10] (x, y, z), 0 elsewhere."""
    arr = np.zeros(SHAPE, np.float32)
    arr[4:10, 4:10, 4:10] = 100.0
    geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(map(tuple, np.eye(3))))
    return write_image(arr, path, geometry)


def test_occlusion_of_a_per_voxel_model_is_local_and_there_are_no_gates(tmp_path: Path) -> None:
    predictor = Predictor(nearest_centre_checkpoint(tmp_path / "nc.pt"), device="cpu")
    image = _cube_image(tmp_path / "cube.nii.gz")
    expl = explain_case(predictor, [image], mask_size=4, overlap=0.0)
    assert expl.image.shape == SHAPE and expl.label.shape == SHAPE
    assert expl.target == 1 and expl.labels == {0: "background", 1: "foreground"}
    assert int(expl.label.sum()) == 6 ** 3 and expl.label[4:10, 4:10, 4:10].all()
    assert expl.centre == (6, 6, 6)  # the centre of mass of voxels 4..9 rounds to 6 (6.5 → banker's 6)
    assert expl.gates.shape == (0, *SHAPE)  # a model without attention gates
    occ = expl.occlusion
    assert occ.shape == SHAPE
    # the model is per-voxel: occluding far from the cube changes nothing, occluding the cube lowers its score
    assert np.abs(occ[14:, 14:, 12:]).max() < 1e-6
    assert occ[4:10, 4:10, 4:10].max() > 0.01


def test_gate_maps_are_the_attention_unets_own(synth3d: Path, tiny, tmp_path: Path) -> None:
    result = train(tiny(synth3d, tmp_path / "run", "train.epochs=1"), progress=False)
    predictor = Predictor(result.best_checkpoint, device="cpu")
    image = sorted((synth3d.parent / "imagesTs").iterdir())[0]
    expl = explain_case(predictor, [image], occlusion=False)
    case = predictor.prepare([image])
    with torch.no_grad():
        _, gates = predictor.model(case.image[None], return_gates=True)
    assert expl.gates.shape == (1, *case.image.shape[1:])  # channels [4, 8]: one gated decoder level
    np.testing.assert_allclose(expl.gates[0], gates[0][0, 0].numpy(), atol=1e-6)
    assert expl.gates.min() >= 0.0 and expl.gates.max() <= 1.0 and expl.occlusion.size == 0
    save_explanation(expl, tmp_path / "e.npz")
    back = load_explanation(tmp_path / "e.npz")
    np.testing.assert_allclose(back.gates, expl.gates, atol=1e-3)  # stored as float16
    np.testing.assert_array_equal(back.label, expl.label)
    assert back.centre == expl.centre and back.target == expl.target
    png = slice_overlays_png(back, [("gate level 0", back.gates[0])])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape[0] > 300 and pixels.reshape(-1, 3).std(0).max() > 20  # 2 rows x 3 views, not blank


def test_bad_settings_and_inputs(tmp_path: Path) -> None:
    predictor = Predictor(nearest_centre_checkpoint(tmp_path / "nc.pt"), device="cpu")
    image = _cube_image(tmp_path / "cube.nii.gz")
    with pytest.raises(ConfigError, match="target class 5"):
        explain_case(predictor, [image], target=5, occlusion=False)
    with pytest.raises(ConfigError, match="overlap"):
        explain_case(predictor, [image], overlap=1.0)
    with pytest.raises(ConfigError, match="mask size"):
        explain_case(predictor, [image], mask_size=[4, 4])
    with pytest.raises(DataError, match=r"missing\.nii\.gz"):
        explain_case(predictor, [tmp_path / "missing.nii.gz"])
