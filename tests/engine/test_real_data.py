"""Training and inference on real images that install offline with the dev extra.

- the MNI152 T1 template and its brain mask from the nilearn wheel (3-D NIfTI);
- stardist's real fluorescence nuclei image with its instance labels (2-D);
- pydicom's real 5-slice CT series (geometry of predictions written for DICOM input).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medattn.config import load_config
from medattn.engine.infer import infer
from medattn.engine.predictor import Predictor
from medattn.engine.trainer import train
from medattn.evaluate import dice
from medattn.io import Geometry, read_image, write_image


def _dataset_json(root: Path, cases: list[tuple[str, str]], labels: dict[str, int]) -> Path:
    meta = {"name": root.name, "labels": labels, "channel_names": {"0": "image"},
            "training": [{"image": img, "label": lab} for img, lab in cases]}
    path = root / "dataset.json"
    path.write_text(json.dumps(meta))
    return path


@pytest.mark.slow
def test_mni152_brain_mask_is_learned_and_geometry_kept(tmp_path):
    datasets = pytest.importorskip("nilearn.datasets", reason="dev extra: nilearn")
    template = datasets.load_mni152_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    t_path = tmp_path / "imagesTr" / "mni152_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(template.dataobj, dtype=np.float32), template.affine), t_path)
    m_arr = (np.asarray(mask.dataobj) > 0.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(m_arr, mask.affine), tmp_path / "labelsTr" / "mni152.nii.gz")
    ds = _dataset_json(tmp_path, [("imagesTr/mni152.nii.gz", "labelsTr/mni152.nii.gz")],
                       {"background": 0, "brain": 1})
    cfg = load_config(None, [
        f"data.dataset={ds}", f"output_dir={tmp_path / 'run'}", "data.val_fraction=0", "data.num_workers=0",
        "preprocess.target_spacing=[4.0, 4.0, 4.0]", "model.kwargs.channels=[8, 16, 32]",
        "train.patch_size=[32, 32, 32]", "train.samples_per_volume=4", "train.batch_size=1", "train.epochs=25",
        "train.lr=0.003", "augment.rotate_deg=0", "augment.scale=0"])
    result = train(cfg, progress=False)
    out = tmp_path / "pred"
    infer(result.last_checkpoint, [t_path], out, progress=False)
    pred = nib.load(out / "mni152.nii.gz")
    assert pred.shape == template.shape
    assert np.array_equal(pred.affine, nib.load(t_path).affine)  # the template's geometry, bit for bit
    score = dice(np.asarray(pred.dataobj) == 1, m_arr == 1)
    print(f"MNI152 brain Dice {score:.4f}")
    assert score >= 0.9, score


@pytest.mark.slow
def test_stardist_nuclei_2d_held_out_quadrant(tmp_path):
    sd = pytest.importorskip("stardist.data", reason="dev extra: stardist")
    image, labels = sd.test_image_nuclei_2d(return_mask=True)
    assert image.shape == (512, 512)
    # array axes are (row, col); medattn's 2-D convention is (x = column, y = row)
    image, fg = image.T.astype(np.uint16), (labels.T > 0).astype(np.uint8)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    quadrants = {"q00": (0, 0), "q01": (0, 256), "q10": (256, 0), "q11": (256, 256)}
    for name, (x, y) in quadrants.items():
        write_image(image[x:x + 256, y:y + 256], tmp_path / "imagesTr" / f"{name}_0000.tif", Geometry.identity(2))
        write_image(fg[x:x + 256, y:y + 256], tmp_path / "labelsTr" / f"{name}.png", Geometry.identity(2))
    held_out = "q11"
    train_cases = [(f"imagesTr/{n}.tif", f"labelsTr/{n}.png") for n in quadrants if n != held_out]
    ds = _dataset_json(tmp_path, train_cases, {"background": 0, "nucleus": 1})
    cfg = load_config("attention_unet_2d", [
        f"data.dataset={ds}", f"output_dir={tmp_path / 'run'}", "data.val_fraction=0", "data.num_workers=0",
        "model.kwargs.channels=[16, 32, 64]", "train.patch_size=[128, 128]", "train.samples_per_volume=4",
        "train.batch_size=2", "train.epochs=20", "train.lr=0.003", "train.val_every=100"])
    result = train(cfg, progress=False)
    pred = Predictor(result.last_checkpoint, device="cpu").predict([tmp_path / "imagesTr" / f"{held_out}_0000.tif"])
    x, y = quadrants[held_out]
    score = dice(pred.label == 1, fg[x:x + 256, y:y + 256] == 1)
    print(f"stardist held-out Dice {score:.4f}")
    assert score >= 0.8, score


def test_real_dicom_series_prediction_keeps_series_geometry(tmp_path, synth3d, tiny):
    pydicom = pytest.importorskip("pydicom", reason="dev extra: pydicom")
    series = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
    ref = read_image(series)
    result = train(tiny(synth3d, tmp_path / "run", "train.epochs=1", "train.val_every=5"), progress=False)
    out = infer(result.last_checkpoint, [series], tmp_path / "pred", progress=False)
    assert out.done == ["CT5N"] and not out.failed
    pred = read_image(tmp_path / "pred" / "CT5N.nii.gz")
    assert pred.spatial_shape == ref.spatial_shape == (16, 16, 5)
    assert pred.geometry.allclose(ref.geometry, atol=1e-5)
    np.testing.assert_allclose(pred.geometry.spacing, (0.488281, 0.488281, 2.5), atol=1e-5)
    np.testing.assert_allclose(pred.geometry.origin, (-72.199997, -143.0, -1.2375), atol=1e-4)
    assert torch.as_tensor(pred.array).max() <= 2
