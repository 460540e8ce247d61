"""Write a synthetic phantom dataset to disk: the embedded default dataset of medattn.

Layout (nnU-Net v2 raw layout, also readable as a Medical Segmentation Decathlon task)::

    out_dir/
      dataset.json                         nnU-Net v2 keys + MSD keys + a "medattn" section
      README.txt
      imagesTr/case_000_0000.nii.gz        channel files, suffix _0000, _0001, ...
      labelsTr/case_000.nii.gz             uint8 labels 0..n_organs
      imagesTs/case_008_0000.nii.gz        test cases continue the numbering
      labelsTs/case_008.nii.gz             test labels too, for evaluation

Images come from :mod:`medattn.data.phantoms`. Geometry defaults: 3-D spacing (0.8, 0.8, 2.0) mm
(thin in-plane, thick slices, as in abdominal MRI), 2-D spacing (0.8, 0.8) mm (exact in a PNG
``pHYs`` chunk). With ``oblique=True`` each case gets a direction that is a rotation by about 20°
(±2°) about an oblique axis near (1, 0.5, 0.25) (2-D: about 20° in-plane), det +1, and an origin
that differs slightly per case; the geometry of every case is recorded in
``dataset.json["medattn"]["cases"]``. PNG/TIFF pictures store no origin or direction, so a 2-D PNG
dataset has origin 0 and identity direction whatever ``oblique`` says, and its images are uint8,
mapped linearly from the fixed range ``dataset.json["medattn"]["png_range"]`` to 0..255.

Same arguments (and seed) → byte-identical arrays. Every file is written atomically through
:func:`medattn.io.write_image` / :mod:`medattn.io.atomic`, into a hidden temporary folder that then
replaces ``out_dir`` (an existing ``out_dir`` is replaced only when it is empty or an earlier
synthetic dataset, so stale cases never survive).
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np

from medattn.data.phantoms import (
    BODY_MEAN,
    MAX_ORGANS,
    make_phantom,
    rotation_about_axis,
    sample_layout,
    synthesize_image,
    tissue_map,
)
from medattn.data.synth_folder import check_replaceable, swap_in
from medattn.errors import ConfigError
from medattn.io import Geometry, write_image
from medattn.io.atomic import atomic_write_json, atomic_write_text, current_umask

__all__ = ["DEFAULT_SHAPE", "DEFAULT_SPACING", "GENERATOR", "case_geometry", "write_synthetic_dataset"]

GENERATOR = "medattn.data.synth"
GENERATOR_VERSION = 1
DEFAULT_SHAPE: dict[int, tuple[int, ...]] = {2: (96, 96), 3: (48, 48, 32)}
DEFAULT_SPACING: dict[int, tuple[float, ...]] = {2: (0.8, 0.8), 3: (0.8, 0.8, 2.0)}
FILE_ENDINGS: dict[int, tuple[str, ...]] = {2: (".png", ".nii.gz", ".nrrd", ".mha"),
                                            3: (".nii.gz", ".nrrd", ".mha")}
CHANNEL_NAMES = ("MRI", "MRI_T2", "MRI_PD", "MRI_FLAIR")
OBLIQUE_AXIS = (1.0, 0.5, 0.25)
OBLIQUE_ANGLE_DEG = 20.0
_PICTURES = (".png",)
_ORIGIN_CENTRE_MM = (12.0, -30.0, 40.0)  # patient-space position of the grid centre (before jitter)


def _channel_means(layout_means: tuple[float, ...], channel: int) -> tuple[float, ...]:
    """Per-tissue means (air, body, organ 1..n) of channel ``channel``.

    Channel 0 is the phantom's own contrast (body 0.5, organ k ≈ k). Channel c ≥ 1 is a
    differently weighted acquisition: body 1.2, organs in reverse order of brightness,
    organ k ≈ 0.8 (n + 1 - k) (1 + 0.1 (c - 1)), keeping each case's ±5 % organ jitter.
    """
    if channel == 0:
        return layout_means
    organs = layout_means[2:]
    n = len(organs)
    gain = 1.0 + 0.1 * (channel - 1)
    return (0.0, 1.2, *(0.8 * (n - k) * gain * (m / (k + 1)) for k, m in enumerate(organs)))


def case_geometry(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], oblique: bool, picture: bool
) -> Geometry:
    """The geometry of one case: given spacing, jittered non-zero origin, oblique direction if asked.

    ``picture=True`` (PNG) gives origin 0 and identity direction, which is all a picture stores.
    The origin is chosen so that the grid centre lies near (12, -30, 40) mm (LPS) ± 5 mm.
    """
    d = len(shape)
    if picture:
        return Geometry.identity(d, tuple(spacing))
    if oblique:
        angle = np.deg2rad(OBLIQUE_ANGLE_DEG + rng.uniform(-2.0, 2.0))
        if d == 3:
            axis = np.asarray(OBLIQUE_AXIS) / np.linalg.norm(OBLIQUE_AXIS) + rng.normal(0.0, 0.05, 3)
            direction = rotation_about_axis(axis, angle)
        else:
            direction = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    else:
        direction = np.eye(d)
    half = (np.asarray(shape) - 1) * np.asarray(spacing) / 2
    centre = np.asarray(_ORIGIN_CENTRE_MM[:d]) + rng.uniform(-5.0, 5.0, d)
    return Geometry.from_arrays(spacing, centre - direction @ half, direction)


def _nominal_direction(d: int, oblique: bool, picture: bool) -> list[list[float]]:
    if picture or not oblique:
        return np.eye(d).tolist()
    angle = np.deg2rad(OBLIQUE_ANGLE_DEG)
    if d == 3:
        return rotation_about_axis(OBLIQUE_AXIS, angle).tolist()
    return [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]


def _check_args(spatial_dims, n_train, n_test, shape, n_organs, spacing, file_ending, seed, channels,
                noise, bias) -> None:
    if spatial_dims not in (2, 3):
        raise ConfigError(f"synthetic dataset spatial_dims must be 2 or 3, got {spatial_dims}")
    if file_ending not in FILE_ENDINGS[spatial_dims]:
        raise ConfigError(f"synthetic {spatial_dims}-D dataset file_ending must be one of "
                          f"{', '.join(FILE_ENDINGS[spatial_dims])}, got {file_ending!r}")
    if len(shape) != spatial_dims or len(spacing) != spatial_dims:
        raise ConfigError(f"synthetic dataset shape {shape} and spacing {spacing} need "
                          f"{spatial_dims} entries each")
    if not (isinstance(n_train, int) and n_train >= 1 and isinstance(n_test, int) and n_test >= 0):
        raise ConfigError(f"synthetic dataset needs n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    if not 1 <= channels <= len(CHANNEL_NAMES):
        raise ConfigError(f"synthetic dataset channels must be 1..{len(CHANNEL_NAMES)}, got {channels}")
    if not (isinstance(seed, int) and seed >= 0):
        raise ConfigError(f"synthetic dataset seed must be a non-negative integer, got {seed!r}")
    if not 1 <= n_organs <= MAX_ORGANS:
        raise ConfigError(f"synthetic dataset n_organs must be 1..{MAX_ORGANS}, got {n_organs}")
    if not (noise >= 0 and 0 <= bias < 1):
        raise ConfigError(f"synthetic dataset noise must be >= 0 and bias in [0, 1), got {noise}, {bias}")


def _is_phantom_dataset(out: Path) -> bool:
    """True for a folder an earlier :func:`write_synthetic_dataset` wrote (its dataset.json says so)."""
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    return isinstance(meta, dict) and meta.get("medattn", {}).get("generator") == GENERATOR


def _png_range(n_organs: int, channels: int, noise: float, bias: float) -> tuple[float, float]:
    """Fixed intensity window mapped to 0..255 in PNGs: covers every channel's brightest tissue
    under the strongest bias (organ jitter +5 %) and 4 noise standard deviations either side."""
    top = max([1.05 * n_organs, 1.2] + [1.05 * 0.8 * n_organs * (1 + 0.1 * (c - 1))
                                        for c in range(1, channels)])
    return (round(-4 * noise, 6), round(top * (1 + bias) + 4 * noise, 6))


def _to_png(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.round(np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    spatial_dims: int = 3,
    n_train: int = 8,
    n_test: int = 2,
    shape: tuple[int, ...] | None = None,
    n_organs: int = 2,
    spacing: tuple[float, ...] | None = None,
    oblique: bool = True,
    file_ending: str | None = None,
    seed: int = 0,
    channels: int = 1,
    noise: float = 0.1,
    bias: float = 0.3,
) -> Path:
    """Generate ``n_train + n_test`` phantoms and write them as an nnU-Net v2 / MSD dataset.

    Args:
        out_dir: the dataset folder (created; replaced if it holds an earlier synthetic dataset).
        spatial_dims: 2 (ellipses) or 3 (ellipsoids).
        n_train, n_test: number of training (imagesTr/labelsTr) and test (imagesTs/labelsTs) cases.
        shape: array shape (X, Y[, Z]); default (48, 48, 32) in 3-D, (96, 96) in 2-D.
        n_organs: foreground classes 1..n_organs (named organ_a, organ_b, ...).
        spacing: voxel size in mm; default (0.8, 0.8, 2.0) in 3-D, (0.8, 0.8) in 2-D.
        oblique: give each case a non-identity direction (not stored by PNG).
        file_ending: ".nii.gz" (3-D default), ".nrrd", ".mha"; 2-D also ".png" (2-D default).
        seed: non-negative integer; case i's arrays depend only on (seed, split, i, arguments).
        channels: image channels per case (1..4); channel c >= 1 is a differently contrasted
            copy of the same anatomy with its own bias field and noise.
        noise, bias: phantom noise standard deviation and bias-field amplitude.

    Returns:
        The path of the written ``dataset.json``.

    Raises:
        ConfigError: invalid arguments. DataError: ``out_dir`` cannot be used.
    """
    shape = tuple(int(s) for s in (shape or DEFAULT_SHAPE.get(spatial_dims, ())))
    spacing = tuple(float(s) for s in (spacing or DEFAULT_SPACING.get(spatial_dims, ())))
    file_ending = file_ending or (".png" if spatial_dims == 2 else ".nii.gz")
    _check_args(spatial_dims, n_train, n_test, shape, n_organs, spacing, file_ending, seed, channels,
                noise, bias)
    out = Path(out_dir)
    check_replaceable(out, _is_phantom_dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture = file_ending in _PICTURES
    meta = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "spatial_dims": spatial_dims,
            "shape": list(shape), "n_organs": n_organs, "channels": channels, "noise": noise, "bias": bias,
            "oblique": bool(oblique and not picture), "spacing": list(spacing),
            "direction": _nominal_direction(spatial_dims, oblique, picture)}
    if picture:
        meta["png_range"] = list(_png_range(n_organs, channels, noise, bias))
    width = max(3, len(str(n_train + n_test - 1)))
    names = [f"case_{i:0{width}d}" for i in range(n_train + n_test)]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the dataset is an ordinary folder
        entries = {"training": [], "test": []}
        cases: dict[str, dict] = {}
        for split, key, img_dir, lab_dir in ((0, "training", "imagesTr", "labelsTr"),
                                             (1, "test", "imagesTs", "labelsTs")):
            for sub in (img_dir, lab_dir):  # all four folders exist, even when empty
                (tmp / sub).mkdir()
            split_names = names[:n_train] if split == 0 else names[n_train:]
            for i, name in enumerate(split_names):
                cases[name] = _write_case(tmp, img_dir, lab_dir, name, (seed, split, i), meta, file_ending)
                entries[key].append({"image": f"./{img_dir}/{name}{file_ending}",
                                     "label": f"./{lab_dir}/{name}{file_ending}"})
        dataset = _dataset_json(spatial_dims, n_organs, channels, file_ending, entries,
                                {**meta, "cases": cases})
        atomic_write_json(tmp / "dataset.json", dataset)
        atomic_write_text(tmp / "README.txt", _readme(dataset))
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "dataset.json"


def _write_case(root: Path, img_dir: str, lab_dir: str, name: str, key: tuple[int, int, int], meta: dict,
                file_ending: str) -> dict:
    """Generate case ``key`` = (seed, split, index), write its channel files and label; return its geometry.

    The phantom draws from ``default_rng([*key, 0])`` and the geometry from ``default_rng([*key, 1])``.
    """
    shape, spacing, n = tuple(meta["shape"]), tuple(meta["spacing"]), meta["n_organs"]
    picture = "png_range" in meta
    geometry = case_geometry(np.random.default_rng([*key, 1]), shape, spacing, meta["oblique"], picture)
    rng = np.random.default_rng([*key, 0])
    layout = sample_layout(rng, shape, spacing, n)
    image, label = make_phantom(rng, shape, n, spacing, meta["noise"], meta["bias"], layout=layout)
    images = [image]
    if meta["channels"] > 1:
        tissue = tissue_map(layout, shape, spacing)
        images += [synthesize_image(tissue, _channel_means(layout.means, c), rng, noise=meta["noise"],
                                    bias=meta["bias"]) for c in range(1, meta["channels"])]
    for c, arr in enumerate(images):
        arr = _to_png(arr, *meta["png_range"]) if picture else arr
        write_image(arr, root / img_dir / f"{name}_{c:04d}{file_ending}", geometry)
    write_image(label, root / lab_dir / f"{name}{file_ending}", geometry)
    return geometry.to_dict()


def _dataset_json(spatial_dims, n_organs, channels, file_ending, entries, medattn_meta) -> dict:
    names = {str(c): CHANNEL_NAMES[c] for c in range(channels)}
    labels = {"background": 0, **{f"organ_{string.ascii_lowercase[k]}": k + 1 for k in range(n_organs)}}
    return {
        "name": f"medattn-synth-{spatial_dims}d",
        "description": (f"Synthetic {spatial_dims}-D phantoms: {n_organs} ellipsoid organ(s) inside an "
                        f"ellipsoid body (labelled background, mean {BODY_MEAN}), with a smooth bias "
                        "field, partial-volume blur and Gaussian noise."),
        "reference": "generated by medattn.data.synth",
        "licence": "CC0-1.0",
        "release": f"{GENERATOR_VERSION}.0",
        "channel_names": names,
        "labels": labels,
        "numTraining": len(entries["training"]),
        "numTest": len(entries["test"]),
        "file_ending": file_ending,
        "training": entries["training"],
        "test": entries["test"],
        "tensorImageSize": f"{spatial_dims}D",
        "modality": dict(names),
        "medattn": medattn_meta,
    }


def _readme(meta: dict) -> str:
    m = meta["medattn"]
    return (f"{meta['name']}: synthetic phantoms written by medattn.data.synth (seed {m['seed']}), "
            f"{meta['numTraining']} training and {meta['numTest']} test cases, labels {meta['labels']}.\n"
            f"Layout as nnU-Net v2 raw data (imagesTr/case_XXX_0000{meta['file_ending']}, labelsTr, "
            "imagesTs, labelsTs); dataset.json also carries the Medical Segmentation Decathlon keys.\n"
            "Regenerate with medattn.data.synth.write_synthetic_dataset(out_dir, seed=...) "
            "using the arguments in dataset.json['medattn'].\n")
