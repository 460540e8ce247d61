"""Tiling a slide's tissue into patches at a target magnification.

:func:`patch_grid` picks the pyramid level to read from (the deepest level whose downsample is <=
the one the target magnification needs), lays a regular grid of level-0 top-left corners over the
slide (stride ``patch_size_level0 * (1 - overlap)``, patches entirely inside the slide), and keeps the
patches whose tissue fraction, measured exactly on the tissue mask, is >= ``min_tissue`` (and > 0).
:func:`read_patch` reads one patch and resizes it to ``patch_size`` when the level does not match the
target exactly.

Example: a 40x slide with levels 1, 4, 16 and ``magnification: 20, size: 256`` needs downsample 2:
the patches are read from level 0 as 512 px squares (``read_size``) and resized to 256 px; they
cover 512 level-0 px (``patch_size_level0``) and have mpp = 2 x the slide's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from medattn.config.mil_schema import PatchConfig
from medattn.data.tissue import TissueMask
from medattn.errors import DataError
from medattn.io.slide import Slide


@dataclass(frozen=True)
class PatchGrid:
    """The patches of one slide: level-0 corners and how to read them."""

    coords: np.ndarray  #: [N, 2] int64, level-0 top-left (x, y), row-major order (y, then x)
    level: int  #: pyramid level the patches are read from
    read_size: int  #: patch side in pixels of ``level`` (resized to ``patch_size`` if different)
    patch_size: int  #: patch side at the target magnification (output patch side)
    patch_size_level0: int  #: patch side in level-0 pixels
    magnification: float  #: of the patches (the target)
    mpp: float  #: µm per pixel of the patches
    tissue_fraction: np.ndarray  #: [N] float32 in (0, 1]

    def __len__(self) -> int:
        return len(self.coords)


def _integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table ``[h + 1, w + 1]`` float64 with a zero first row and column."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    sat[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    return sat


def _integral_at(sat: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The mask's integral over ``[0, col) x [0, row)`` at real positions: bilinear interpolation of
    the summed-area table, which is exact for a piecewise-constant mask."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    cols, rows = np.clip(cols, 0, w), np.clip(rows, 0, h)
    c0, r0 = np.minimum(np.floor(cols).astype(np.int64), w - 1), np.minimum(np.floor(rows).astype(np.int64), h - 1)
    c0, r0 = np.maximum(c0, 0), np.maximum(r0, 0)
    a, b = cols - c0, rows - r0
    return (sat[r0, c0] * (1 - a) * (1 - b) + sat[r0, c0 + 1] * a * (1 - b)
            + sat[r0 + 1, c0] * (1 - a) * b + sat[r0 + 1, c0 + 1] * a * b)


def tissue_fractions(tissue: TissueMask, coords: np.ndarray, side_level0: float) -> np.ndarray:
    """Fraction ``[N]`` float32 of each level-0 square ``(x, y, side)`` covered by the tissue mask
    (area-exact, also for squares smaller than a mask pixel or not aligned with the mask grid)."""
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    sat = _integral(tissue.mask)
    sx, sy = tissue.downsample
    x0, y0 = coords[:, 0] / sx, coords[:, 1] / sy
    x1, y1 = (coords[:, 0] + side_level0) / sx, (coords[:, 1] + side_level0) / sy
    area = (_integral_at(sat, x1, y1) - _integral_at(sat, x0, y1) - _integral_at(sat, x1, y0)
            + _integral_at(sat, x0, y0))
    return np.clip(area / ((x1 - x0) * (y1 - y0)), 0.0, 1.0).astype(np.float32)


def patch_grid(slide: Slide, tissue: TissueMask, cfg: PatchConfig) -> PatchGrid:
    """The tissue patches of ``slide`` at ``cfg.magnification`` (see the module docstring).

    Raises DataError (naming the slide) when the target magnification exceeds the slide's.
    """
    need = slide.magnification / cfg.magnification  # level-0 px per target px
    if need < 0.99:
        raise DataError(f"patch.magnification {cfg.magnification:g} exceeds the slide's magnification "
                        f"{slide.magnification:g} (level 0); patches cannot be read at a higher resolution",
                        slide.path)
    level = slide.best_level_for_downsample(need)
    level_ds = slide.level_downsamples[level]
    read_size = max(1, round(cfg.size * need / level_ds))
    side0 = max(1, round(cfg.size * need))
    stride = max(1, round(side0 * (1.0 - cfg.overlap)))
    w0, h0 = slide.dimensions
    xs = np.arange(0, w0 - side0 + 1, stride, dtype=np.int64)
    ys = np.arange(0, h0 - side0 + 1, stride, dtype=np.int64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64).reshape(-1, 2)
    frac = tissue_fractions(tissue, coords, side0)
    keep = (frac >= cfg.min_tissue - 1e-6) & (frac > 0)
    return PatchGrid(coords=coords[keep], level=level, read_size=read_size, patch_size=cfg.size,
                     patch_size_level0=side0, magnification=float(cfg.magnification),
                     mpp=float(slide.mpp * need), tissue_fraction=frac[keep])


def read_patch(slide: Slide, grid: PatchGrid, index: int) -> np.ndarray:
    """Patch ``index`` of ``grid`` as ``[patch_size, patch_size, 3] uint8`` RGB (white outside the slide)."""
    x, y = (int(v) for v in grid.coords[index])
    region = slide.read_region((x, y), grid.level, (grid.read_size, grid.read_size))
    if grid.read_size == grid.patch_size:
        return region
    resized = Image.fromarray(region).resize((grid.patch_size, grid.patch_size), Image.Resampling.BILINEAR)
    return np.asarray(resized)

