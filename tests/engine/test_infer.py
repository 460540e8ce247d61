"""Folder inference: outputs on the input's grid in its format, manifests, skipping, failures, channels."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from support.geometry import rotation as _rotation
from support.models import NearestCentre

import medattn
from medattn.engine.checkpoint import save_checkpoint
from medattn.engine.infer import collect_cases, infer
from medattn.errors import CheckpointError, DataError
from medattn.io import Geometry, read_image, write_dicom_series, write_image


def make_checkpoint(path: Path, spatial_dims: int = 3, channel_weights: list[float] | None = None,
                    target_spacing: list[float] | None = None, centres: list[float] | None = None) -> Path:
    channels = ["t1", "t2"] if channel_weights else ["mr"]
    kwargs = {"spatial_dims": spatial_dims, "in_channels": len(channels), "centres": centres or [0.0, 100.0],
              "channel_weights": channel_weights}
    payload = {
        "model": {"name": "test_nearest_centre", "kwargs": kwargs},
        "state_dict": NearestCentre(**kwargs).state_dict(),
        "labels": {"0": "background", "1": "tumour"}, "channels": channels, "spatial_dims": spatial_dims,
        "preprocess": {"orientation": "RAS" if spatial_dims == 3 else None,
                       "target_spacing": target_spacing or [1.5] * spatial_dims,
                       "normalization": "none", "zscore_nonzero": True, "ct_window": [-1000.0, 1000.0]},
        "patch_size": [16] * spatial_dims,
        "infer": {"overlap": 0.25, "blend": "gaussian", "tta": False, "sw_batch_size": 2,
                  "save_probabilities": False},
    }
    return save_checkpoint(payload, path)


OBLIQUE = Geometry.from_arrays((0.9, 1.2, 2.0), (10.0, -20.0, 5.0), _rotation(2, 25) @ _rotation(0, 15))
SHAPE = (30, 26, 16)


def ellipsoid(centre_mm: tuple[float, ...] = (10.0, 18.0, 12.0),
              radii_mm: tuple[float, ...] = (8.0, 7.0, 6.0), shape: tuple[int, ...] = SHAPE,
              spacing: tuple[float, ...] = OBLIQUE.spacing,
              value: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(image int16, mask bool) on an index grid; the ellipsoid is off-centre along every axis."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    mask = ((((idx * np.asarray(spacing)) - np.asarray(centre_mm)) / np.asarray(radii_mm)) ** 2).sum(-1) <= 1
    return (mask * value).astype(np.int16), mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def ckpt3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def test_nifti_outputs_probabilities_and_manifest(tmp_path: Path, ckpt3d: Path) -> None:
    image, mask = ellipsoid()
    src = write_image(image, tmp_path / "imagesTs" / "case_000_0000.nii.gz", OBLIQUE)
    out = tmp_path / "out"
    result = infer(ckpt3d, [tmp_path / "imagesTs"], out, save_probabilities=True, device="cpu",
                   progress=False)
    assert result.ok and result.done == ["case_000"] and result.skipped == []
    label_path, manifest_path = out / "case_000.nii.gz", out / "case_000.json"
    probs_path = out / "probabilities" / "case_000.nii.gz"
    assert result.outputs["case_000"] == [label_path, probs_path, manifest_path]

    inp, lab = nib.load(src), nib.load(label_path)
    assert np.array_equal(lab.affine, inp.affine)  # bit-identical
    assert int(lab.header["sform_code"]) == int(inp.header["sform_code"])
    assert lab.shape == SHAPE and lab.get_data_dtype() == np.uint8
    assert dice(np.asarray(lab.dataobj), mask) >= 0.95

    probs = nib.load(probs_path)
    assert probs.shape == (*SHAPE, 2) and np.array_equal(probs.affine, inp.affine)
    p = probs.get_fdata()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(axis=-1), np.asarray(lab.dataobj))

    m = json.loads(manifest_path.read_text())
    assert m["case"] == "case_000" and m["inputs"] == [str(src.resolve())]
    assert m["outputs"] == {"label": "case_000.nii.gz", "probabilities": "probabilities/case_000.nii.gz"}
    assert m["checkpoint"] == {"path": str(ckpt3d.resolve()),
                               "sha256": hashlib.sha256(ckpt3d.read_bytes()).hexdigest()}
    assert m["medattn"] == medattn.__version__ and m["model"] == "test_nearest_centre"
    assert m["labels"] == {"0": "background", "1": "tumour"} and m["device"] == "cpu"
    assert m["settings"] == {"overlap": 0.25, "blend": "gaussian", "tta": False, "sw_batch_size": 2,
                             "save_probabilities": True}
    assert m["input_shape"] == list(SHAPE)
    assert Geometry.from_dict(m["input_geometry"]).allclose(OBLIQUE, atol=1e-5)
    assert {"read", "preprocess", "predict", "resample", "total", "write"} <= set(m["timings"])
    settings = json.loads((out / "infer_settings.json").read_text())
    assert settings["settings"] == m["settings"] and settings["checkpoint"] == m["checkpoint"]
    assert settings["inputs"] == [str((tmp_path / "imagesTs").resolve())]
    assert sorted(f.name for f in out.iterdir()) == ["case_000.json", "case_000.nii.gz",
                                                     "infer_settings.json", "probabilities"]
    assert [f.name for f in (out / "probabilities").iterdir()] == ["case_000.nii.gz"]


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_sitk_formats_keep_format_and_geometry(tmp_path: Path, ckpt3d: Path, ext: str) -> None:
    image, mask = ellipsoid()
    write_image(image, tmp_path / f"scan{ext}", OBLIQUE)
    result = infer(ckpt3d, [tmp_path / f"scan{ext}"], tmp_path / "out", progress=False)
    assert result.done == ["scan"] and result.outputs["scan"] == [tmp_path / "out" / f"scan{ext}",
                                                                  tmp_path / "out" / "scan.json"]
    pred = read_image(tmp_path / "out" / f"scan{ext}")
    assert pred.format == ext[1:] and pred.spatial_shape == SHAPE
    np.testing.assert_allclose(pred.geometry.spacing, OBLIQUE.spacing, atol=1e-6)
    np.testing.assert_allclose(pred.geometry.origin, OBLIQUE.origin, atol=1e-6)
    np.testing.assert_allclose(pred.geometry.direction_matrix, OBLIQUE.direction_matrix, atol=1e-6)
    assert dice(pred.array[0], mask) >= 0.95


def test_dicom_series_folder_gives_nifti_on_the_series_grid(tmp_path: Path, ckpt3d: Path) -> None:
    image, mask = ellipsoid()
    series = tmp_path / "dicom" / "patient7"
    write_dicom_series(image, series, OBLIQUE)
    geometry = read_image(series).geometry
    result = infer(ckpt3d, [series], tmp_path / "out", progress=False)
    assert result.done == ["patient7"], result.failed
    lab = nib.load(tmp_path / "out" / "patient7.nii.gz")
    np.testing.assert_allclose(lab.affine, geometry.to_affine_ras(), atol=1e-4)
    assert lab.shape == SHAPE and dice(np.asarray(lab.dataobj), mask) >= 0.95
    # a folder of series folders lists them as cases
    assert [c.name for c in collect_cases([tmp_path / "dicom"], tmp_path / "o2", 1)] == ["patient7"]


def test_png_2d(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "model2d.pt", spatial_dims=2, target_spacing=[1.0, 1.0],
                           centres=[0.0, 200.0])
    geometry = Geometry.from_arrays((0.7, 1.1), (0.0, 0.0), np.eye(2))
    image, mask = ellipsoid(centre_mm=(12.0, 20.0), radii_mm=(8.0, 9.0), shape=(40, 30),
                            spacing=geometry.spacing, value=200)
    write_image(image.astype(np.uint8), tmp_path / "in" / "slide_0000.png", geometry)
    result = infer(ckpt, [tmp_path / "in"], tmp_path / "out", save_probabilities=True, progress=False)
    assert result.done == ["slide"], result.failed
    pred = read_image(tmp_path / "out" / "slide.png")
    assert pred.spatial_shape == (40, 30) and pred.array.dtype == np.uint8
    np.testing.assert_allclose(pred.geometry.spacing, geometry.spacing, atol=1e-6)
    assert dice(pred.array[0], mask) >= 0.95
    probs = nib.load(tmp_path / "out" / "probabilities" / "slide.nii.gz")
    assert probs.shape == (40, 30, 1, 2)
    np.testing.assert_allclose(probs.get_fdata().sum(axis=-1), 1.0, atol=1e-5)


def test_skip_rerun_and_overwrite(tmp_path: Path, ckpt3d: Path) -> None:
    image, _ = ellipsoid()
    write_image(image, tmp_path / "in" / "a.nii.gz", OBLIQUE)
    out = tmp_path / "out"
    assert infer(ckpt3d, [tmp_path / "in"], out, progress=False).done == ["a"]
    files = [out / "a.nii.gz", out / "a.json"]
    before = [f.stat().st_mtime_ns for f in files]
    again = infer(ckpt3d, [tmp_path / "in"], out, progress=False)
    assert again.skipped == ["a"] and again.done == [] and again.outputs["a"] == files
    assert [f.stat().st_mtime_ns for f in files] == before
    for f in files:
        os.utime(f, ns=(0, 0))
    forced = infer(ckpt3d, [tmp_path / "in"], out, overwrite=True, progress=False)
    assert forced.done == ["a"] and all(f.stat().st_mtime_ns != 0 for f in files)
    # different settings (or another checkpoint) are not "already done"
    changed = infer(ckpt3d, [tmp_path / "in"], out, overlap=0.5, progress=False)
    assert changed.done == ["a"] and json.loads(files[1].read_text())["settings"]["overlap"] == 0.5


def test_corrupt_case_fails_alone(tmp_path: Path, ckpt3d: Path) -> None:
    image, mask = ellipsoid()
    folder = tmp_path / "in"
    write_image(image, folder / "a.nii.gz", OBLIQUE)
    (folder / "b.nii.gz").write_bytes(b"\x1f\x8b\x08 this is not a NIfTI file")
    write_image(image, folder / "c.nii.gz", OBLIQUE)
    out = tmp_path / "out"
    result = infer(ckpt3d, [folder], out, save_probabilities=True, progress=False)
    assert result.done == ["a", "c"] and not result.ok
    [(case, message)] = result.failed
    assert case == "b" and message.startswith(str(folder / "b.nii.gz") + ": ") and "\n" not in message
    assert sorted(f.name for f in out.iterdir() if f.name.startswith("b")) == []
    assert [f.name for f in out.iterdir() if f.name.startswith(".")] == []  # no temporary files left
    assert dice(np.asarray(nib.load(out / "c.nii.gz").dataobj), mask) >= 0.95


def test_failure_while_writing_leaves_no_partial_output(tmp_path: Path, ckpt3d: Path) -> None:
    image, _ = ellipsoid()
    write_image(image, tmp_path / "in" / "a.nii.gz", OBLIQUE)
    out = tmp_path / "out"
    (out / "probabilities" / "a.nii.gz").mkdir(parents=True)  # the probabilities file cannot be written
    result = infer(ckpt3d, [tmp_path / "in"], out, save_probabilities=True, progress=False)
    assert result.done == [] and result.failed == [
        ("a", f"{out / 'probabilities' / 'a.nii.gz'}: cannot write the prediction: Is a directory")]
    assert not (out / "a.nii.gz").exists() and not (out / "a.json").exists()


def test_multichannel_grouping(tmp_path: Path) -> None:
    # the model looks at channel 1 only, so swapped channels would segment the decoy instead
    ckpt = make_checkpoint(tmp_path / "model2ch.pt", channel_weights=[0.0, 1.0])
    target, mask = ellipsoid(centre_mm=(10.0, 18.0, 12.0))
    decoy, _ = ellipsoid(centre_mm=(18.0, 10.0, 20.0), radii_mm=(5.0, 5.0, 5.0))
    folder = tmp_path / "imagesTs"
    write_image(decoy, folder / "brain_0000.nii.gz", OBLIQUE)
    write_image(target, folder / "brain_0001.nii.gz", OBLIQUE)
    write_image(target, folder / "lonely_0000.nii.gz", OBLIQUE)
    result = infer(ckpt, [folder], tmp_path / "out", progress=False)
    assert result.done == ["brain"]
    [(case, message)] = result.failed
    assert case == "lonely" and "lonely_0000.nii.gz" in message and "_0001" in message
    assert dice(np.asarray(nib.load(tmp_path / "out" / "brain.nii.gz").dataobj), mask) >= 0.95
    assert json.loads((tmp_path / "out" / "brain.json").read_text())["inputs"] == [
        str((folder / "brain_0000.nii.gz").resolve()), str((folder / "brain_0001.nii.gz").resolve())]


def test_input_errors(tmp_path: Path, ckpt3d: Path) -> None:
    image, _ = ellipsoid()
    write_image(image, tmp_path / "in" / "x.nii.gz", OBLIQUE)
    write_image(image, tmp_path / "in" / "x_0000.nrrd", OBLIQUE)
    with pytest.raises(DataError, match="two inputs for case 'x'"):
        collect_cases([tmp_path / "in"], tmp_path / "out", 1)
    with pytest.raises(DataError, match="would overwrite the input"):
        collect_cases([tmp_path / "in" / "x.nii.gz"], tmp_path / "in", 1)
    with pytest.raises(DataError, match=r"nowhere: no such file or folder"):
        infer(ckpt3d, [tmp_path / "nowhere"], tmp_path / "out", progress=False)


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    image, _ = ellipsoid()
    write_image(image, tmp_path / "a.nii.gz", OBLIQUE)
    with pytest.raises(CheckpointError, match=r"absent\.pt: no such checkpoint file"):
        infer(tmp_path / "absent.pt", [tmp_path / "a.nii.gz"], tmp_path / "out", progress=False)
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a medattn checkpoint"):
        infer(tmp_path / "other.pt", [tmp_path / "a.nii.gz"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
