"""Synthetic phantoms: ellipsoid "organs" inside an ellipsoid "body", as numpy arrays.

Conventions:

* Arrays are spatial-only, axis order (X, Y[, Z]) as everywhere in medattn (axis 0 = x index).
* Shapes of the phantom are defined in **millimetres** in the *grid frame*: the centre of voxel
  ``idx`` sits at ``idx * spacing`` mm (no origin, no direction: those are only attached when the
  arrays are written to disk), so anisotropic spacing gives the physically right shape.
* Tissue map (:func:`tissue_map`): 0 air, 1 body, ``1 + k`` organ ``k`` (k = 1..n_organs). The
  label map holds exactly ``0..n_organs``: air and body are both background (label 0).
* Image formation: piecewise-constant class means, a slight blur (partial-volume effect), a smooth
  multiplicative bias field ``1 + bias * p(x)`` with ``p`` a random quadratic polynomial scaled to
  ``max |p| = 1`` over the grid, then additive Gaussian noise of standard deviation ``noise``.

Default means are air 0, body 0.5, organ ``k`` ≈ ``k`` (±5 %), so classes overlap after bias and
noise and the body (labelled background) makes a single intensity threshold insufficient.
Every sampled organ is non-empty, lies inside the body and does not overlap another organ.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medattn.errors import ConfigError

__all__ = ["BODY_MEAN", "Ellipsoid", "PhantomLayout", "ellipsoid_mask", "make_phantom", "make_phantom_2d",
           "make_phantom_3d", "random_rotation", "rotation_about_axis", "sample_layout", "synthesize_image",
           "tissue_map"]

BODY_MEAN = 0.5
MAX_ORGANS = 8
_PARTIAL_VOLUME_SIGMA_VOX = 0.5  # blur of the clean image, in voxels, before bias and noise
# organ semi-axes as a fraction of the body's semi-axes: in-plane (axes 0, 1) and along the body axis (2)
_ORGAN_RADIUS_RANGE = ((0.32, 0.50), (0.32, 0.50), (0.30, 0.50))
_TRIES_PER_ORGAN = 40


@dataclass(frozen=True)
class Ellipsoid:
    """A D-dimensional ellipsoid (an ellipse for D = 2) in grid-frame millimetres.

    Attributes:
        centre_mm: centre, length D, in mm (voxel ``idx`` is at ``idx * spacing``).
        radii_mm: semi-axis lengths, length D, in mm.
        rotation: D×D rotation matrix (det +1); column j is the direction of semi-axis j.
        intensity: mean intensity of the tissue it paints.
    """

    centre_mm: tuple[float, ...]
    radii_mm: tuple[float, ...]
    rotation: tuple[tuple[float, ...], ...]
    intensity: float

    def __post_init__(self) -> None:
        d = len(self.centre_mm)
        if len(self.radii_mm) != d or np.asarray(self.rotation).shape != (d, d):
            raise ValueError(f"inconsistent ellipsoid dimensions: {self}")
        if min(self.radii_mm) <= 0:
            raise ValueError(f"ellipsoid radii must be positive: {self.radii_mm}")

    @classmethod
    def axis_aligned(cls, centre_mm, radii_mm, intensity: float = 1.0) -> Ellipsoid:
        """Ellipsoid whose semi-axes are the grid axes (identity rotation)."""
        d = len(centre_mm)
        return cls(_tup(centre_mm), _tup(radii_mm), _mat(np.eye(d)), float(intensity))

    @property
    def volume_mm(self) -> float:
        """Volume in mm³ (area in mm² for D = 2): 4/3·π·abc or π·ab."""
        r = np.prod(self.radii_mm)
        return float(4.0 / 3.0 * np.pi * r if len(self.radii_mm) == 3 else np.pi * r)


@dataclass(frozen=True)
class PhantomLayout:
    """The drawn parameters of one phantom: an optional body and the organs (class k = index + 1).

    Where organs overlap, the one listed first wins (priority = list order).
    """

    body: Ellipsoid | None
    organs: tuple[Ellipsoid, ...]

    @property
    def means(self) -> tuple[float, ...]:
        """Mean intensity per tissue class of :func:`tissue_map`: (air, body, organ 1, ..., organ n)."""
        body = 0.0 if self.body is None else self.body.intensity
        return (0.0, body, *(o.intensity for o in self.organs))


def _tup(v) -> tuple[float, ...]:
    return tuple(float(x) for x in np.ravel(v))


def _mat(m: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in np.asarray(m))


def rotation_about_axis(axis, angle: float) -> np.ndarray:
    """(3, 3) rotation matrix (det +1) by ``angle`` radians about ``axis`` (right-hand rule)."""
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def random_rotation(rng: np.random.Generator, ndim: int, max_tilt_deg: float = 25.0) -> np.ndarray:
    """A random (ndim, ndim) rotation matrix (det +1) for ndim = 2 or 3.

    2-D: uniform angle. 3-D: uniform spin about the last axis, then a tilt of that axis by up to
    ``max_tilt_deg`` about a random in-plane axis (organs lie roughly along the body axis);
    ``max_tilt_deg=180`` gives a general rotation.
    """
    spin = rng.uniform(0.0, 2 * np.pi)
    c, s = np.cos(spin), np.sin(spin)
    if ndim == 2:
        return np.array([[c, -s], [s, c]])
    spin_m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    a = rng.uniform(0.0, 2 * np.pi)
    tilt_angle = np.deg2rad(rng.uniform(-max_tilt_deg, max_tilt_deg))
    tilt = rotation_about_axis((np.cos(a), np.sin(a), 0.0), tilt_angle)
    return tilt @ spin_m


def _check_grid(shape, spacing) -> tuple[tuple[int, ...], tuple[float, ...]]:
    shape = tuple(int(s) for s in shape)
    spacing = _tup(spacing)
    if len(shape) not in (2, 3) or len(spacing) != len(shape):
        raise ConfigError(f"phantom shape {shape} and spacing {spacing} must both have 2 or 3 entries")
    if min(shape) < 8 or min(spacing) <= 0:
        raise ConfigError(f"phantom shape {shape} needs >= 8 voxels per axis and positive spacing {spacing}")
    return shape, spacing


def ellipsoid_mask(ellipsoid: Ellipsoid, shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """Boolean array of ``shape`` (X, Y[, Z]): True where the voxel centre lies inside the ellipsoid."""
    rot = np.asarray(ellipsoid.rotation, dtype=np.float64)
    grids = [np.arange(n) * s - c for n, s, c in zip(shape, spacing, ellipsoid.centre_mm)]
    d = len(shape)
    total = np.zeros(shape, dtype=np.float64)
    for j in range(d):  # coordinate along semi-axis j = sum_i R[i, j] * (p_i - c_i)
        q = sum(rot[i, j] * grids[i].reshape([-1 if k == i else 1 for k in range(d)]) for i in range(d))
        total += (q / ellipsoid.radii_mm[j]) ** 2
    return total <= 1.0


def tissue_map(layout: PhantomLayout, shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """uint8 array of ``shape``: 0 air, 1 body, ``1 + k`` organ k (first-listed organ wins overlaps).

    The label map is ``np.maximum(tissue, 1) - 1`` (body → 0, organ k → k).
    """
    tissue = np.zeros(shape, dtype=np.uint8)
    if layout.body is not None:
        tissue[ellipsoid_mask(layout.body, shape, spacing)] = 1
    for k in range(len(layout.organs), 0, -1):  # paint in reverse so the first organ wins
        tissue[ellipsoid_mask(layout.organs[k - 1], shape, spacing)] = 1 + k
    return tissue


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], bias: float) -> np.ndarray:
    """Smooth multiplicative field ``1 + bias * p``, p a random quadratic with max |p| = 1 on the grid."""
    if bias == 0:
        return np.ones(shape, dtype=np.float64)
    d = len(shape)
    u = [np.linspace(-1.0, 1.0, n).reshape([-1 if k == i else 1 for k in range(d)])
         for i, n in enumerate(shape)]
    p = np.zeros(shape, dtype=np.float64)
    for i in range(d):
        p = p + rng.normal() * u[i] + 0.5 * rng.normal() * u[i] ** 2
    for i, j in itertools.combinations(range(d), 2):
        p = p + 0.5 * rng.normal() * u[i] * u[j]
    p = p - p.mean()
    peak = np.abs(p).max()
    return 1.0 + bias * (p / peak if peak > 1e-12 else p)


def synthesize_image(tissue: np.ndarray, means: tuple[float, ...], rng: np.random.Generator, *,
                     noise: float = 0.1, bias: float = 0.3) -> np.ndarray:
    """Render a float32 image (same shape as ``tissue``) from a tissue map and per-class means.

    ``means[t]`` is the clean intensity of tissue class t. The clean image is blurred slightly
    (partial volume), multiplied by a random smooth bias field of amplitude ``bias`` and corrupted
    by additive Gaussian noise of standard deviation ``noise``; both are drawn from ``rng``.
    """
    lut = np.asarray(means, dtype=np.float64)
    if lut.shape[0] <= int(tissue.max()):
        raise ValueError(f"{lut.shape[0]} means given for tissue classes up to {int(tissue.max())}")
    clean = ndimage.gaussian_filter(lut[tissue], _PARTIAL_VOLUME_SIGMA_VOX, mode="nearest")
    image = clean * _bias_field(rng, tissue.shape, bias)
    if noise > 0:
        image = image + rng.normal(0.0, noise, size=tissue.shape)
    return image.astype(np.float32)


def _sample_body(rng: np.random.Generator, shape, spacing) -> Ellipsoid:
    """A torso: in-plane semi-axes 40-46 % of the field of view, and (3-D) a long axis of 65-80 %
    of the z extent, so the body is cut by the first and last slices as in a real scan."""
    extent = np.asarray(shape) * np.asarray(spacing)
    centre = (np.asarray(shape) - 1) * np.asarray(spacing) / 2 + rng.uniform(-0.03, 0.03, len(shape)) * extent
    radii = rng.uniform(0.40, 0.46, len(shape)) * extent
    radii[2:] = rng.uniform(0.65, 0.80, len(shape) - 2) * extent[2:]
    a = np.deg2rad(rng.uniform(-15.0, 15.0))  # turned slightly about the body axis
    rot = np.eye(len(shape))
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return Ellipsoid(_tup(centre), _tup(radii), _mat(rot), BODY_MEAN)


def _inside_grid(ell: Ellipsoid, shape, spacing) -> bool:
    """True when the ellipsoid's bounding box lies within the grid (the organ is not cut off)."""
    half = np.sqrt(((np.asarray(ell.rotation) * np.asarray(ell.radii_mm)[None, :]) ** 2).sum(axis=1))
    c = np.asarray(ell.centre_mm)
    return bool(np.all(c - half >= 0) and np.all(c + half <= (np.asarray(shape) - 1) * np.asarray(spacing)))


def sample_layout(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], n_organs: int = 2
) -> PhantomLayout:
    """Draw a body and ``n_organs`` randomly rotated organs, all sizes in mm.

    Organ k gets mean intensity ``k * U(0.95, 1.05)``. An organ is accepted only if it lies wholly
    within the grid, its voxel mask has at least 8 voxels, lies inside the body (shrunk by 10 %)
    and is disjoint from the organs drawn before it. If some organ cannot be placed, all organs are
    redrawn with a smaller size range, so organs stay of similar size. Raises ConfigError when the
    grid cannot hold them.
    """
    shape, spacing = _check_grid(shape, spacing)
    if not 1 <= int(n_organs) <= MAX_ORGANS:
        raise ConfigError(f"n_organs must be between 1 and {MAX_ORGANS}, got {n_organs}")
    body = _sample_body(rng, shape, spacing)
    shrunk = Ellipsoid(body.centre_mm, _tup(np.asarray(body.radii_mm) * 0.9), body.rotation, 0.0)
    inner = ellipsoid_mask(shrunk, shape, spacing)
    scale = 1.0
    while scale >= 0.2:
        organs = _place_organs(rng, body, inner, shape, spacing, int(n_organs), scale)
        if organs is not None:
            return PhantomLayout(body, organs)
        scale *= 0.9
    raise ConfigError(f"phantom grid {shape} at spacing {spacing} mm is too small for {n_organs} organs")


def _place_organs(rng, body, inner, shape, spacing, n_organs, scale) -> tuple[Ellipsoid, ...] | None:
    """Rejection-sample ``n_organs`` disjoint organs inside ``inner``; None if one of them fails.

    Organ semi-axes are drawn as fractions (times ``scale``) of the body's semi-axes, in the body
    frame, and the organs are spread around the body axis in sectors (like abdominal organs
    around the spine), each with its own random rotation.
    """
    d = len(shape)
    body_r = np.asarray(body.radii_mm)
    body_rot = np.asarray(body.rotation)
    lo, hi = np.asarray(_ORGAN_RADIUS_RANGE[:d]).T
    taken = np.zeros(shape, dtype=bool)
    organs: list[Ellipsoid] = []
    theta0 = rng.uniform(0.0, 2 * np.pi)
    for k in range(1, n_organs + 1):
        for _ in range(_TRIES_PER_ORGAN):
            radii = np.maximum(rng.uniform(lo, hi) * scale * body_r, max(spacing))
            theta = theta0 + 2 * np.pi * (k - 1 + rng.uniform(-0.25, 0.25)) / n_organs
            reach = rng.uniform(0.3, 0.55) if n_organs > 1 else rng.uniform(0.0, 0.4)
            offset = np.zeros(d)
            offset[:2] = reach * np.array([np.cos(theta), np.sin(theta)])
            offset[2:] = rng.uniform(-0.25, 0.25, d - 2)
            centre = np.asarray(body.centre_mm) + body_rot @ (offset * body_r)
            rot = body_rot @ random_rotation(rng, d)
            cand = Ellipsoid(_tup(centre), _tup(radii), _mat(rot), float(k * rng.uniform(0.95, 1.05)))
            if not _inside_grid(cand, shape, spacing):
                continue
            m = ellipsoid_mask(cand, shape, spacing)
            if m.sum() >= 8 and not (m & ~inner).any() and not (m & taken).any():
                organs.append(cand)
                taken |= m
                break
        else:
            return None
    return tuple(organs)


def make_phantom(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    n_organs: int = 2,
    spacing: tuple[float, ...] | None = None,
    noise: float = 0.1,
    bias: float = 0.3,
    layout: PhantomLayout | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D or 3-D phantom: (image float32 ``shape``, label uint8 ``shape`` with values 0..n_organs).

    ``spacing`` is the voxel size in mm per axis (default 1). ``noise`` is the standard deviation of
    the additive Gaussian noise, ``bias`` the amplitude of the multiplicative bias field (the field
    spans ``[1 - bias, 1 + bias]``). ``layout`` (optional) fixes the body and organs instead of
    drawing them from ``rng``; it must have exactly ``n_organs`` organs, each covering at least one
    voxel centre. Raises ConfigError for invalid parameters.
    """
    shape, spacing = _check_grid(shape, spacing or (1.0,) * len(shape))
    if not (noise >= 0 and 0 <= bias < 1):
        raise ConfigError(f"phantom noise must be >= 0 and bias in [0, 1), got noise={noise}, bias={bias}")
    if layout is None:
        layout = sample_layout(rng, shape, spacing, n_organs)
    elif len(layout.organs) != n_organs:
        raise ConfigError(f"layout has {len(layout.organs)} organs but n_organs={n_organs}")
    tissue = tissue_map(layout, shape, spacing)
    label = (np.maximum(tissue, 1) - 1).astype(np.uint8)
    missing = sorted(set(range(1, n_organs + 1)) - set(np.unique(label).tolist()))
    if missing:
        raise ConfigError(f"organs {missing} of the phantom layout cover no voxel of grid {shape}")
    return synthesize_image(tissue, layout.means, rng, noise=noise, bias=bias), label


def make_phantom_3d(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (48, 48, 32),
    n_organs: int = 2,
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.5),
    noise: float = 0.1,
    bias: float = 0.3,
    layout: PhantomLayout | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """3-D phantom: (image float32 (X, Y, Z), label uint8 (X, Y, Z)); see :func:`make_phantom`."""
    if len(shape) != 3:
        raise ConfigError(f"make_phantom_3d needs a 3-D shape, got {tuple(shape)}")
    return make_phantom(rng, shape, n_organs, spacing, noise, bias, layout)


def make_phantom_2d(
    rng: np.random.Generator,
    shape: tuple[int, int] = (96, 96),
    n_organs: int = 2,
    spacing: tuple[float, float] = (1.0, 1.0),
    noise: float = 0.1,
    bias: float = 0.3,
    layout: PhantomLayout | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """2-D phantom with ellipses: (image float32 (X, Y), label uint8 (X, Y)); see :func:`make_phantom`."""
    if len(shape) != 2:
        raise ConfigError(f"make_phantom_2d needs a 2-D shape, got {tuple(shape)}")
    return make_phantom(rng, shape, n_organs, spacing, noise, bias, layout)
