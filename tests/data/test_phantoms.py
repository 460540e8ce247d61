"""Tests for medattn.data.phantoms: the in-memory phantom generators."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medattn.data.phantoms import (
    BODY_MEAN,
    Ellipsoid,
    PhantomLayout,
    ellipsoid_mask,
    make_phantom_2d,
    make_phantom_3d,
    random_rotation,
    rotation_about_axis,
    sample_layout,
    synthesize_image,
    tissue_map,
)
from medattn.errors import ConfigError

SHAPE_3D = (40, 40, 24)
SPACING_3D = (0.8, 0.8, 2.0)


def _rot(m: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in m)


@pytest.mark.parametrize("n_organs", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_3d_labels_are_exactly_0_to_n_and_every_organ_present(seed: int, n_organs: int) -> None:
    image, label = make_phantom_3d(np.random.default_rng(seed), SHAPE_3D, n_organs, SPACING_3D)
    assert image.shape == SHAPE_3D and image.dtype == np.float32
    assert label.shape == SHAPE_3D and label.dtype == np.uint8
    assert np.unique(label).tolist() == list(range(n_organs + 1))
    assert np.isfinite(image).all()
    for k in range(1, n_organs + 1):  # each organ is a sizeable blob, not a few stray voxels
        assert (label == k).sum() >= 100


@pytest.mark.parametrize("n_organs", [1, 2, 4])
def test_2d_labels_are_exactly_0_to_n_and_every_organ_present(n_organs: int) -> None:
    for seed in range(3):
        image, label = make_phantom_2d(np.random.default_rng(seed), (64, 64), n_organs, (0.7, 0.7))
        assert image.shape == (64, 64) and image.dtype == np.float32 and label.dtype == np.uint8
        assert np.unique(label).tolist() == list(range(n_organs + 1))


def test_default_shapes() -> None:
    image, label = make_phantom_3d(np.random.default_rng(0))
    assert image.shape == label.shape == (48, 48, 32)
    image, label = make_phantom_2d(np.random.default_rng(0))
    assert image.shape == label.shape == (96, 96)


def test_sampled_organs_lie_inside_the_body_and_do_not_overlap() -> None:
    for seed in range(4):
        layout = sample_layout(np.random.default_rng(seed), SHAPE_3D, SPACING_3D, 3)
        body = ellipsoid_mask(layout.body, SHAPE_3D, SPACING_3D)
        masks = [ellipsoid_mask(o, SHAPE_3D, SPACING_3D) for o in layout.organs]
        for m in masks:
            assert m.any() and not (m & ~body).any()
        assert (np.sum(masks, axis=0) <= 1).all()
        assert layout.means[:2] == (0.0, BODY_MEAN)
        assert [round(v) for v in layout.means[2:]] == [1, 2, 3]


def test_anisotropic_sphere_has_the_right_extent_in_voxels() -> None:
    # A 10 mm sphere at 1 x 1 x 2.5 mm: 21 voxels across in x and y (-10..10 mm),
    # and 9 slices in z (-10, -7.5, ..., +10 mm).
    sphere = Ellipsoid.axis_aligned((24.0, 24.0, 40.0), (10.0, 10.0, 10.0))
    m = ellipsoid_mask(sphere, (48, 48, 32), (1.0, 1.0, 2.5))
    idx = np.argwhere(m)
    extent = idx.max(axis=0) - idx.min(axis=0) + 1
    assert extent.tolist() == [21, 21, 9]
    assert m[24, 24, 16] and m[34, 24, 16] and not m[35, 24, 16]
    assert m[24, 24, 12] and not m[24, 24, 11]  # z = 30 mm is on the surface, 27.5 mm is outside


@pytest.mark.parametrize("rotated", [False, True])
def test_ellipsoid_voxel_count_matches_volume_in_mm(rotated: bool) -> None:
    spacing = (1.0, 1.0, 2.5)
    rot = rotation_about_axis((1.0, 2.0, 0.5), 0.7) if rotated else np.eye(3)
    organ = Ellipsoid((24.0, 24.0, 40.0), (14.0, 9.0, 18.0), _rot(rot), 1.0)
    layout = PhantomLayout(body=None, organs=(organ,))
    _, label = make_phantom_3d(np.random.default_rng(0), (48, 48, 32), 1, spacing, layout=layout)
    expected = 4.0 / 3.0 * np.pi * 14.0 * 9.0 * 18.0 / 2.5  # = 3800.1 voxels
    assert organ.volume_mm == pytest.approx(4.0 / 3.0 * np.pi * 14.0 * 9.0 * 18.0)
    assert (label == 1).sum() == pytest.approx(expected, rel=0.05)


def test_rotation_turns_the_long_axis() -> None:
    # long axis (15 mm) along x, rotated 90 degrees about z: it now lies along y
    rot = rotation_about_axis((0.0, 0.0, 1.0), np.pi / 2)
    assert np.allclose(rot @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    ell = Ellipsoid((20.0, 20.0, 20.0), (15.0, 4.0, 4.0), _rot(rot), 1.0)
    idx = np.argwhere(ellipsoid_mask(ell, (40, 40, 40), (1.0, 1.0, 1.0)))
    extent = idx.max(axis=0) - idx.min(axis=0) + 1
    assert extent.tolist() == [9, 31, 9]


def test_ellipse_area_2d() -> None:
    ell = Ellipsoid((30.0, 30.0), (20.0, 12.0), _rot(rotation_about_axis((0, 0, 1), 0.4)[:2, :2]), 1.0)
    m = ellipsoid_mask(ell, (120, 60), (0.5, 1.0))
    assert ell.volume_mm == pytest.approx(np.pi * 240.0)
    assert m.sum() * 0.5 == pytest.approx(np.pi * 240.0, rel=0.03)


def test_random_rotations_are_proper() -> None:
    rng = np.random.default_rng(3)
    for d in (2, 3):
        for _ in range(5):
            r = random_rotation(rng, d)
            assert np.allclose(r.T @ r, np.eye(d), atol=1e-12)
            assert np.linalg.det(r) == pytest.approx(1.0)
    r = random_rotation(rng, 3, max_tilt_deg=25.0)
    assert np.degrees(np.arccos(r[2, 2])) <= 25.0 + 1e-9  # long axis tilted at most 25 degrees


def test_first_listed_organ_wins_overlaps() -> None:
    a = Ellipsoid.axis_aligned((10.0, 16.0), (6.0, 6.0), 1.0)
    b = Ellipsoid.axis_aligned((16.0, 16.0), (6.0, 6.0), 2.0)
    tissue = tissue_map(PhantomLayout(None, (a, b)), (32, 32), (1.0, 1.0))
    assert tissue[13, 16] == 2  # in both: organ 1 (tissue 2) wins
    assert tissue[20, 16] == 3  # only in organ 2
    assert tissue[2, 2] == 0


def test_same_seed_gives_identical_bytes_and_other_seed_differs() -> None:
    a = make_phantom_3d(np.random.default_rng(7), SHAPE_3D, 2, SPACING_3D)
    b = make_phantom_3d(np.random.default_rng(7), SHAPE_3D, 2, SPACING_3D)
    c = make_phantom_3d(np.random.default_rng(8), SHAPE_3D, 2, SPACING_3D)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert not np.array_equal(a[1], c[1])


def _interior(label: np.ndarray, k: int) -> np.ndarray:
    """Organ k without its 2-voxel rim (the partial-volume blur reaches 2 voxels)."""
    return ndimage.binary_erosion(label == k, np.ones((3,) * label.ndim, bool), iterations=2)


def test_clean_phantom_has_the_exact_class_means() -> None:
    image, label = make_phantom_3d(np.random.default_rng(4), SHAPE_3D, 2, SPACING_3D, noise=0.0, bias=0.0)
    layout = sample_layout(np.random.default_rng(4), SHAPE_3D, SPACING_3D, 2)  # the same draw
    for k in (1, 2):
        assert np.allclose(image[_interior(label, k)], layout.organs[k - 1].intensity, atol=1e-5)
    assert image[0, 0, 0] == pytest.approx(0.0, abs=1e-6)  # air in the corner


def test_bias_field_and_noise_are_present() -> None:
    rng = np.random.default_rng(5)
    _, label = make_phantom_3d(rng, SHAPE_3D, 2, SPACING_3D)
    inner1 = _interior(label, 1)
    # bias only: intensity varies smoothly inside an organ, within the amplitude [0.7, 1.3] x mean
    biased, _ = make_phantom_3d(np.random.default_rng(5), SHAPE_3D, 2, SPACING_3D, noise=0.0, bias=0.3)
    vals = biased[inner1]
    assert vals.std() > 0.005
    assert vals.min() >= 0.95 * 0.7 - 1e-4 and vals.max() <= 1.05 * 1.3 + 1e-4
    # noise only: the standard deviation inside the organ interior equals the noise level
    noisy, _ = make_phantom_3d(np.random.default_rng(5), SHAPE_3D, 2, SPACING_3D, noise=0.2, bias=0.0)
    assert noisy[inner1].std() == pytest.approx(0.2, rel=0.1)
    # default: organ means ordered body (labelled 0, inside the body) < organ 1 < organ 2
    image, label = make_phantom_3d(np.random.default_rng(5), SHAPE_3D, 2, SPACING_3D)
    body_only = tissue_map(sample_layout(np.random.default_rng(5), SHAPE_3D, SPACING_3D, 2),
                           SHAPE_3D, SPACING_3D) == 1
    means = [image[body_only].mean(), image[label == 1].mean(), image[label == 2].mean()]
    assert means[0] == pytest.approx(0.5, abs=0.1) and means[0] < means[1] < means[2]
    assert image[_interior(label, 2)].std() > 0.1


def test_synthesize_image_second_contrast_and_means_check() -> None:
    tissue = np.zeros((16, 16), dtype=np.uint8)
    tissue[4:12, 4:12] = 1
    tissue[6:10, 6:10] = 2
    img = synthesize_image(tissue, (0.0, 1.5, 0.25), np.random.default_rng(0), noise=0.0, bias=0.0)
    assert img[7, 7] == pytest.approx(0.25, abs=0.05) and img[4, 4] < 1.5 and img[0, 0] == 0.0
    with pytest.raises(ValueError, match="means"):
        synthesize_image(tissue, (0.0, 1.0), np.random.default_rng(0))


def test_a_single_threshold_does_not_solve_the_task() -> None:
    image, label = make_phantom_3d(np.random.default_rng(0), (48, 48, 32), 2, SPACING_3D)
    cuts = np.quantile(image, np.linspace(0.5, 1.0, 51))
    lower, upper = np.meshgrid(cuts, cuts, indexing="ij")
    best = []
    for k in (1, 2):  # best Dice of any intensity window (lo, hi] for organ k
        m = (label == k).ravel()
        order = np.argsort(image.ravel())
        v, mk = image.ravel()[order], m[order].astype(np.int64)
        cum_tp, n_pred = np.concatenate([[0], np.cumsum(mk)]), np.arange(v.size + 1)
        lo_i, hi_i = np.searchsorted(v, lower, "right"), np.searchsorted(v, upper, "right")
        tp = np.where(hi_i > lo_i, cum_tp[hi_i] - cum_tp[lo_i], 0)
        pred = np.where(hi_i > lo_i, n_pred[hi_i] - n_pred[lo_i], 0)
        best.append((2 * tp / (pred + m.sum())).max())
    assert max(best) < 0.98 and np.mean(best) < 0.93, best


def test_invalid_parameters_raise_config_error() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="3-D shape"):
        make_phantom_3d(rng, (32, 32))
    with pytest.raises(ConfigError, match="n_organs"):
        make_phantom_2d(rng, (32, 32), n_organs=0)
    with pytest.raises(ConfigError, match="bias"):
        make_phantom_2d(rng, (32, 32), bias=1.5)
    with pytest.raises(ConfigError, match="too small"):
        make_phantom_2d(rng, (8, 8), n_organs=8)
    organ = Ellipsoid.axis_aligned((16.0, 16.0), (5.0, 5.0))
    with pytest.raises(ConfigError, match="layout has 1 organs"):
        make_phantom_2d(rng, (32, 32), n_organs=2, layout=PhantomLayout(None, (organ,)))
    outside = Ellipsoid.axis_aligned((100.0, 100.0), (2.0, 2.0))
    with pytest.raises(ConfigError, match="cover no voxel"):
        make_phantom_2d(rng, (32, 32), n_organs=1, layout=PhantomLayout(None, (outside,)))
