"""resample_to_grid: identity, exact flips/permutations, linear ramps under spacing changes, 2-D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medattn.engine.resample import resample_to_grid

# An oblique source grid: rotation about z by 20°, anisotropic spacing, non-zero origin.
_C, _S = np.cos(np.radians(20.0)), np.sin(np.radians(20.0))
OBLIQUE = np.array([[_C * 0.8, -_S * 1.1, 0.0, 12.0],
                    [_S * 0.8, _C * 1.1, 0.0, -7.5],
                    [0.0, 0.0, 2.5, 3.0],
                    [0.0, 0.0, 0.0, 1.0]])


def _random(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).random(shape).astype(np.float32))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_identity_returns_the_input(mode: str) -> None:
    data = _random((2, 5, 6, 7))
    out = resample_to_grid(data, OBLIQUE, OBLIQUE, (5, 6, 7), mode=mode)
    assert out.shape == data.shape and out.dtype == data.dtype
    # nearest is exact; bilinear is within float32 rounding of the normalised sampling coordinates
    np.testing.assert_allclose(out.numpy(), data.numpy(), rtol=0, atol=0 if mode == "nearest" else 1e-6)


def test_identity_bilinear_is_bit_exact() -> None:
    data = _random((2, 5, 6, 7))
    assert torch.equal(resample_to_grid(data, OBLIQUE, OBLIQUE, (5, 6, 7), mode="bilinear"), data)


def test_flip_and_permutation_are_exact_with_nearest() -> None:
    data = _random((2, 5, 6, 7))
    # destination index (i, j, k) is source index (4 - i, k, j): axis 0 flipped, axes 1 and 2 swapped
    perm = np.array([[-1.0, 0, 0, 4], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    out = resample_to_grid(data, OBLIQUE, OBLIQUE @ perm, (5, 7, 6), mode="nearest")
    expected = np.flip(data.numpy(), axis=1).transpose(0, 1, 3, 2)
    assert out.shape == (2, 5, 7, 6)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_integer_labels_survive_nearest_permutation() -> None:
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 4, (1, 3, 4, 5)).astype(np.int64))
    # destination index (i, j, k) is source index (k, 3 - j, i)
    perm = np.array([[0, 0, 1.0, 0], [0, -1, 0, 3], [1, 0, 0, 0], [0, 0, 0, 1]])
    out = resample_to_grid(labels, np.eye(4), perm, (5, 4, 3), mode="nearest")
    assert out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), np.flip(labels.numpy(), axis=2).transpose(0, 3, 2, 1))


def test_spacing_change_maps_a_linear_ramp() -> None:
    # source: unit spacing, origin 0, value = 10 + 3x + 2y - z at voxel centre (x, y, z) = index
    x, y, z = np.meshgrid(np.arange(8.0), np.arange(3.0), np.arange(2.0), indexing="ij")
    data = torch.from_numpy((10 + 3 * x + 2 * y - z)[None].astype(np.float32))
    # destination: spacing (2, 0.5, 1) with origin (0.5, 0, 0): centres x = 0.5, 2.5, 4.5, 6.5; y = 0 .. 2
    dst = np.diag([2.0, 0.5, 1.0, 1.0])
    dst[0, 3] = 0.5
    out = resample_to_grid(data, np.eye(4), dst, (4, 5, 2), mode="bilinear")[0].numpy()
    assert out.shape == (4, 5, 2)
    assert out[0, 0, 0] == pytest.approx(11.5, abs=1e-5)  # 10 + 3 * 0.5
    assert out[1, 1, 0] == pytest.approx(18.5, abs=1e-5)  # 10 + 3 * 2.5 + 2 * 0.5
    assert out[3, 4, 1] == pytest.approx(32.5, abs=1e-5)  # 10 + 3 * 6.5 + 2 * 2 - 1
    np.testing.assert_allclose(out[:, 0, 0], [11.5, 17.5, 23.5, 29.5], atol=1e-5)
    np.testing.assert_allclose(out[0, :, 0], [11.5, 12.5, 13.5, 14.5, 15.5], atol=1e-5)


def test_outside_the_source_takes_the_edge_value() -> None:
    data = torch.tensor([[[1.0], [4.0], [9.0]]])  # (1, 3, 1): values at x = 0, 1, 2
    dst = np.eye(3)
    dst[0, 2] = -2.0  # destination centres x = -2, -1, 0, 1, 2, 3, 4
    out = resample_to_grid(data, np.eye(3), dst, (7, 1), mode="bilinear")[0, :, 0].numpy()
    np.testing.assert_allclose(out, [1, 1, 1, 4, 9, 9, 9], atol=1e-6)


def test_2d_ramp_and_transpose() -> None:
    x, y = np.meshgrid(np.arange(4.0), np.arange(6.0), indexing="ij")
    data = torch.from_numpy((1 + 2 * x + 5 * y)[None].astype(np.float32))  # (1, 4, 6)
    src = np.array([[0.7, 0, -3.0], [0, 1.3, 4.0], [0, 0, 1]])  # spacing (0.7, 1.3), origin (-3, 4)
    # destination: half the x spacing, same origin and y: dst centre (i, j) sits at source index (i / 2, j)
    dst = src @ np.diag([0.5, 1.0, 1.0])
    out = resample_to_grid(data, src, dst, (7, 6), mode="bilinear")[0].numpy()
    ii, jj = np.meshgrid(np.arange(7.0), np.arange(6.0), indexing="ij")
    np.testing.assert_allclose(out, 1 + 2 * (ii / 2) + 5 * jj, atol=1e-5)
    assert out[3, 2] == pytest.approx(14.0, abs=1e-5)  # 1 + 2 * 1.5 + 5 * 2

    swap = np.array([[0, 1.0, 0], [1, 0, 0], [0, 0, 1]])  # dst (i, j) = src (j, i)
    out_t = resample_to_grid(data, src, src @ swap, (6, 4), mode="nearest")
    np.testing.assert_array_equal(out_t.numpy(), data.numpy().transpose(0, 2, 1))


def test_2d_accepts_4x4_affines() -> None:
    """2-D grids given as 4×4 affines in the z = 0 plane (as medattn.data.transforms.affine_4x4 makes)."""
    x, y = np.meshgrid(np.arange(5.0), np.arange(3.0), indexing="ij")
    data = torch.from_numpy((2 * x - y)[None].astype(np.float32))
    src = np.diag([2.0, 2.0, 1.0, 1.0])  # spacing 2 mm
    dst = np.diag([1.0, 2.0, 1.0, 1.0])  # 1 mm along x: dst i is source index i / 2
    out = resample_to_grid(data, src, dst, (9, 3), mode="bilinear")[0].numpy()
    ii, jj = np.meshgrid(np.arange(9.0), np.arange(3.0), indexing="ij")
    np.testing.assert_allclose(out, 2 * (ii / 2) - jj, atol=1e-5)
