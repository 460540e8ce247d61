"""Regions of a slide (a mask PNG or GeoJSON polygons in level-0 pixels) and the patches inside them.

Region experiments ("remove the annotated tumour", "keep only the tumour") need to know which patches
of a bag lie in a region. A patch counts as inside when at least ``min_inside`` of its level-0 square
``[x, x + size) × [y, y + size)`` is covered by the region.

- a PNG/JPEG/TIFF mask (nonzero = inside) covers the whole slide, whatever its size (a thumbnail-sized
  mask is stretched over the slide's level-0 extent);
- GeoJSON (QuPath annotations: a FeatureCollection, Feature, or bare Polygon/MultiPolygon, holes
  allowed) is in level-0 pixels and is rasterised onto a grid of at most ``max_size`` pixels a side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medattn.errors import DataError

MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
GEOJSON_SUFFIXES = (".geojson", ".json")


@dataclass
class Region:
    """A region on a slide.

    Attributes:
        mask: ``[h, w]`` bool grid covering the slide's level-0 extent.
        downsample: ``(sx, sy)`` level-0 pixels per mask pixel.
        source: the file it came from (or a description).
    """

    mask: np.ndarray
    downsample: tuple[float, float]
    source: str = ""

    @property
    def area_level0(self) -> float:
        """Area of the region in level-0 px²."""
        return float(self.mask.sum()) * self.downsample[0] * self.downsample[1]


def _coordinates(node: Any) -> list[tuple[float, float]]:
    """All (x, y) vertices of a GeoJSON object's polygons."""
    if isinstance(node, dict):
        if node.get("type") == "FeatureCollection":
            return [p for f in node.get("features", []) for p in _coordinates(f)]
        if node.get("type") == "Feature":
            return _coordinates(node.get("geometry") or {})
        if node.get("type") == "GeometryCollection":
            return [p for g in node.get("geometries", []) for p in _coordinates(g)]
        return _coordinates(node.get("coordinates", []))
    if isinstance(node, (list, tuple)):
        if len(node) >= 2 and all(isinstance(v, (int, float)) for v in node[:2]):
            return [(float(node[0]), float(node[1]))]
        return [p for item in node for p in _coordinates(item)]
    return []


def region_from_geojson(geojson: dict, slide_size: tuple[int, int], max_size: int = 4096,
                        source: str = "GeoJSON region", min_downsample: float = 1.0) -> Region:
    """Rasterise GeoJSON polygons (level-0 px) over a slide of ``slide_size`` = (width, height) level-0 px.

    The grid has at most ``max_size`` pixels a side and at least ``min_downsample`` level-0 px per pixel
    (1/16 of a patch side is plenty to measure how much of a patch a region covers).
    """
    from medattn.data.tissue import geojson_to_mask

    width, height = slide_size
    points = np.asarray(_coordinates(geojson), dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        raise DataError("the region has no polygon", source)
    lo, hi = points.min(axis=0), points.max(axis=0)
    if hi[0] <= 0 or hi[1] <= 0 or lo[0] >= width or lo[1] >= height:
        raise DataError(f"the region (x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f}) lies outside the "
                        f"slide ({width} x {height} px at level 0)", source)
    scale = max(1.0, min_downsample, max(width, height) / max_size)
    shape = (max(1, int(np.ceil(height / scale))), max(1, int(np.ceil(width / scale))))
    downsample = (width / shape[1], height / shape[0])
    try:
        mask = np.asarray(geojson_to_mask(geojson, shape, downsample), dtype=bool)
    except DataError as exc:
        raise DataError(str(exc), source) from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DataError(f"not a valid GeoJSON region ({exc})", source) from None
    if not mask.any():
        raise DataError("the region covers no part of the slide", source)
    return Region(mask, downsample, source)


def load_region(path: str | Path, slide_size: tuple[int, int], max_size: int = 4096,
                min_downsample: float = 1.0) -> Region:
    """Read a region mask (PNG/JPEG/TIFF, nonzero = inside, stretched over the slide) or GeoJSON file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("region file not found", path)
    suffix = path.suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        try:
            geojson = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"not a readable GeoJSON file ({exc})", path) from None
        return region_from_geojson(geojson, slide_size, max_size, str(path), min_downsample)
    if suffix not in MASK_SUFFIXES:
        raise DataError(f"unsupported region file type '{suffix}' (use a mask image "
                        f"{'/'.join(MASK_SUFFIXES)} or GeoJSON)", path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"not a readable mask image ({exc})", path) from None
    mask = array > 0
    if not mask.any():
        raise DataError("the region mask is empty (no nonzero pixel)", path)
    width, height = slide_size
    return Region(mask, (width / mask.shape[1], height / mask.shape[0]), str(path))


def region_for_bag(region: str | Path | Region | dict, coords: np.ndarray, patch_size_level0: float,
                   attrs: dict[str, Any] | None = None, slide_size: tuple[int, int] | None = None) -> Region:
    """A region (file, GeoJSON dict or :class:`Region`) over the slide a bag's patches ``coords [N, 2]`` come from.

    The slide's level-0 (width, height) is ``slide_size``, else the bag's ``slide_dimensions`` /
    ``dimensions`` attribute, else the extent of its patches (all a bag knows). GeoJSON is rasterised at
    1/16 of a patch side at most.
    """
    if slide_size is None:
        for key in ("slide_dimensions", "dimensions", "level0_dimensions"):
            value = (attrs or {}).get(key)
            if value is not None and len(value) == 2:
                slide_size = (int(value[0]), int(value[1]))
                break
        else:
            ends = np.asarray(coords).reshape(-1, 2).max(axis=0) + patch_size_level0
            slide_size = (int(ends[0]), int(ends[1]))
    if isinstance(region, Region):
        return region
    if isinstance(region, dict):
        return region_from_geojson(region, slide_size, min_downsample=patch_size_level0 / 16)
    return load_region(region, slide_size, min_downsample=patch_size_level0 / 16)


def inside_fraction(coords: np.ndarray, patch_size_level0: float, region: Region) -> np.ndarray:
    """Fraction ``[N]`` of each patch's level-0 square (top-left ``coords [N, 2]``) covered by the region."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    h, w = region.mask.shape
    table = np.zeros((h + 1, w + 1), dtype=np.int64)  # summed-area table
    table[1:, 1:] = region.mask.astype(np.int64).cumsum(0).cumsum(1)
    sx, sy = region.downsample
    c0 = np.round(coords[:, 0] / sx).astype(np.int64)
    r0 = np.round(coords[:, 1] / sy).astype(np.int64)
    c1 = np.maximum(c0 + 1, np.round((coords[:, 0] + patch_size_level0) / sx).astype(np.int64))
    r1 = np.maximum(r0 + 1, np.round((coords[:, 1] + patch_size_level0) / sy).astype(np.int64))
    area = (c1 - c0) * (r1 - r0)  # the whole square, also where it leaves the grid
    c0, c1 = np.clip(c0, 0, w), np.clip(c1, 0, w)
    r0, r1 = np.clip(r0, 0, h), np.clip(r1, 0, h)
    inside = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    return inside / area


def patches_in_region(coords: np.ndarray, patch_size_level0: float, region: Region,
                      min_inside: float = 0.5) -> np.ndarray:
    """``[N]`` bool: the patches with at least ``min_inside`` of their area inside ``region``."""
    if not 0.0 < min_inside <= 1.0:
        raise DataError(f"min_inside must be in (0, 1], got {min_inside}")
    return inside_fraction(coords, patch_size_level0, region) >= min_inside - 1e-9
