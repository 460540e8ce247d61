"""Tissue masks: detection on a slide thumbnail, user masks (PNG / GeoJSON) and QuPath GeoJSON export.

Detection (:func:`detect_tissue`) works on HSV saturation: stained tissue is coloured, glass is
grey-white. The saturation is blurred, thresholded (Otsu, or a fixed threshold), limited to a
brightness range (no glass glare, no black borders), cleaned by a closing and an opening, pieces
smaller than ``min_area_um2`` are dropped and holes smaller than ``max_hole_area_um2`` are filled.
All sizes are in µm at level 0 and converted through the slide's mpp and the thumbnail's downsample,
so one config fits slides of any resolution.

Masks live on a thumbnail-sized grid: ``TissueMask.downsample = (sx, sy)`` level-0 pixels per mask
pixel; mask pixel ``(r, c)`` covers level-0 ``[c * sx, (c + 1) * sx) x [r * sy, (r + 1) * sy)``.
GeoJSON polygons are in level-0 pixels (QuPath's convention) with holes as inner rings.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import draw, filters, measure, morphology

from medattn.config.mil_schema import TissueConfig
from medattn.errors import DataError
from medattn.io.atomic import atomic_path, atomic_write_json
from medattn.io.slide import Slide

#: Otsu's threshold is never below this saturation, so a blank slide (glass noise only) stays blank
MIN_OTSU_SATURATION = 0.03
_EIGHT = np.ones((3, 3), bool)


@dataclass
class TissueMask:
    """A tissue mask ``[h, w] bool`` on a thumbnail-sized grid of a slide."""

    mask: np.ndarray  #: [h, w] bool, True = tissue
    downsample: tuple[float, float]  #: level-0 pixels per mask pixel (sx, sy)
    source: str  #: "detected" or the path of the user mask


def _saturation_brightness(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[h, w, 3] uint8`` → HSV saturation and mean brightness, both ``[h, w]`` float in [0, 1]."""
    x = rgb.astype(np.float32) / 255.0
    cmax, cmin = x.max(axis=2), x.min(axis=2)
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)
    return sat.astype(np.float32), x.mean(axis=2)


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """``mask`` without 8-connected pieces smaller than ``min_px`` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """``mask`` with its holes (4-connected background not touching the border) of < ``max_px`` px filled."""
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes < max_px
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def detect_tissue(thumbnail: np.ndarray, downsample: tuple[float, float], mpp: float,
                  cfg: TissueConfig) -> np.ndarray:
    """Tissue ``[h, w] bool`` of a thumbnail ``[h, w, 3] uint8`` whose pixels are ``downsample``
    level-0 pixels of ``mpp`` µm each (see the module docstring for the steps)."""
    sat, bright = _saturation_brightness(thumbnail)
    if cfg.blur_sigma > 0:
        sat = filters.gaussian(sat, sigma=cfg.blur_sigma, preserve_range=True)
    if cfg.method == "otsu":
        thr = filters.threshold_otsu(sat) if float(sat.max()) > float(sat.min()) else 1.0
        thr = max(float(thr), MIN_OTSU_SATURATION)
    else:
        thr = cfg.threshold
    mask = (sat > thr) & (bright <= cfg.max_brightness) & (bright >= cfg.min_brightness)
    um_per_px = mpp * (downsample[0] + downsample[1]) / 2.0  # µm per mask pixel (one side)
    area_px = mpp * mpp * downsample[0] * downsample[1]  # µm² per mask pixel
    r_close, r_open = cfg.close_radius_um / um_per_px, cfg.open_radius_um / um_per_px
    if r_close >= 0.5:
        pad = int(np.ceil(r_close)) + 1  # pad so that closing does not erode the image border
        mask = morphology.isotropic_closing(np.pad(mask, pad, mode="edge"), r_close)[pad:-pad, pad:-pad]
    if r_open >= 0.5:
        mask = morphology.isotropic_opening(mask, r_open)
    mask = _drop_small(mask, cfg.min_area_um2 / area_px)
    if cfg.fill_holes:
        mask = _fill_small_holes(mask, cfg.max_hole_area_um2 / area_px)
    return np.ascontiguousarray(mask, dtype=bool)


def thumbnail_shape(slide: Slide, max_size: int) -> tuple[int, int]:
    """``(h, w)`` of the grid :meth:`Slide.get_thumbnail` uses for ``max_size``."""
    w0, h0 = slide.dimensions
    scale = max(w0 / max_size, h0 / max_size, 1.0)
    return max(1, min(max_size, round(h0 / scale))), max(1, min(max_size, round(w0 / scale)))


def tissue_mask_for(slide: Slide, cfg: TissueConfig) -> TissueMask:
    """The user mask ``cfg.mask`` (``{slide_id}`` filled in) if set, else tissue detected on a thumbnail."""
    if cfg.mask:
        return load_mask(cfg.mask.replace("{slide_id}", slide.slide_id), slide, cfg.thumbnail_size)
    thumb, ds = slide.get_thumbnail(cfg.thumbnail_size)
    return TissueMask(detect_tissue(thumb, ds, slide.mpp, cfg), ds, "detected")


def load_mask(path: str | Path, slide: Slide, max_size: int = 2048) -> TissueMask:
    """A user mask: a PNG/TIFF/JPEG covering the whole slide (any size; non-zero = tissue; stretched
    over the slide) or GeoJSON polygons in level-0 pixels (rasterised at most ``max_size`` px wide)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("tissue mask not found", path)
    w0, h0 = slide.dimensions
    if path.suffix.lower() in (".geojson", ".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"not valid GeoJSON ({exc})", path) from exc
        h, w = thumbnail_shape(slide, max_size)
        ds = (w0 / w, h0 / h)
        try:
            mask = geojson_to_mask(data, (h, w), ds)
        except DataError as exc:
            raise DataError(str(exc), path) from exc
        return TissueMask(mask, ds, str(path))
    try:
        with Image.open(path) as im:
            im.load()
            bands = im.getbands()
            grey = np.asarray(im.convert("L")) > 0
            mask = grey & (np.asarray(im.getchannel("A")) > 0) if "A" in bands else grey
    except Exception as exc:
        raise DataError(f"not a readable mask image ({exc})", path) from exc
    h, w = mask.shape
    if abs((w / h) / (w0 / h0) - 1.0) > 0.05:
        raise DataError(f"mask is {w}x{h} px but the slide is {w0}x{h0}: the aspect ratios differ", path)
    if max(h, w) > max_size:
        th, tw = thumbnail_shape(slide, max_size)
        small = Image.fromarray(mask.astype(np.uint8) * 255).resize((tw, th), Image.Resampling.BOX)
        mask = np.asarray(small) >= 128
        h, w = mask.shape
    return TissueMask(mask, (w0 / w, h0 / h), str(path))


def _ring_xy(contour: np.ndarray, downsample: tuple[float, float], outer: bool) -> list[list[float]]:
    """A closed find_contours ring (mask ``(row, col)`` of a 1-px padded crop, already offset) →
    level-0 ``[[x, y], ...]``, counter-clockwise if ``outer`` else clockwise (RFC 7946)."""
    ring = measure.approximate_polygon(contour, tolerance=0.01)  # drops collinear points only
    x = (ring[:, 1] + 0.5) * downsample[0]
    y = (ring[:, 0] + 0.5) * downsample[1]
    signed = float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))  # shoelace: > 0 = counter-clockwise (x, y)
    if (signed < 0) == outer:
        x, y = x[::-1], y[::-1]
    return [[round(float(a), 2), round(float(b), 2)] for a, b in zip(x, y, strict=True)]


def _largest_contour(crop: np.ndarray) -> np.ndarray:
    padded = np.pad(crop.astype(np.float32), 1)
    contours = measure.find_contours(padded, 0.5, fully_connected="high")
    return max(contours, key=len) - 1.0  # back to crop coordinates


def mask_to_geojson(mask: TissueMask, name: str = "Tissue") -> dict:
    """A GeoJSON FeatureCollection with one Polygon (outer ring + holes) per 8-connected tissue piece,
    in level-0 pixels, importable into QuPath as annotations classified ``name``."""
    features = []
    labels, _ = ndimage.label(mask.mask, structure=_EIGHT)
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        piece = labels[sl] == index
        filled = ndimage.binary_fill_holes(piece)
        offset = np.array([sl[0].start, sl[1].start], dtype=float)
        rings = [_ring_xy(_largest_contour(filled) + offset, mask.downsample, outer=True)]
        holes, _ = ndimage.label(filled & ~piece)
        for hole_index, hsl in enumerate(ndimage.find_objects(holes), start=1):
            if hsl is not None:
                hole = holes[hsl] == hole_index
                hoff = offset + np.array([hsl[0].start, hsl[1].start], dtype=float)
                rings.append(_ring_xy(_largest_contour(hole) + hoff, mask.downsample, outer=False))
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"medattn-tissue-{index}-{rings[0][0]}")),
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation", "name": f"{name} {index}",
                           "classification": {"name": name, "color": [0, 160, 60]}, "isLocked": False},
        })
    return {"type": "FeatureCollection", "features": features}


def _polygons(geojson: Any) -> list[list]:
    """All polygons (each a list of rings) in a FeatureCollection, Feature, feature list or geometry."""
    if isinstance(geojson, list):
        return [p for item in geojson for p in _polygons(item)]
    if not isinstance(geojson, dict):
        raise DataError("GeoJSON must be an object or a list of features")
    kind = geojson.get("type")
    if kind == "FeatureCollection":
        return _polygons(geojson.get("features", []))
    if kind == "Feature":
        return _polygons(geojson.get("geometry") or {"type": None})
    if kind == "GeometryCollection":
        return _polygons(geojson.get("geometries", []))
    if kind == "Polygon":
        return [geojson["coordinates"]]
    if kind == "MultiPolygon":
        return list(geojson["coordinates"])
    return []  # points, lines: no area


def geojson_to_mask(geojson: dict, shape: tuple[int, int], downsample: tuple[float, float]) -> np.ndarray:
    """Rasterise GeoJSON polygons (level-0 pixels, inner rings = holes) onto a ``shape`` = ``(h, w)``
    grid of ``downsample`` level-0 px per pixel: a pixel is set when its centre lies inside."""
    out = np.zeros(shape, bool)
    polygons = _polygons(geojson)
    if not polygons:
        raise DataError("GeoJSON has no Polygon or MultiPolygon")
    for rings in polygons:
        poly = np.zeros(shape, bool)
        for k, ring in enumerate(rings):
            try:
                xy = np.asarray(ring, dtype=np.float64)[:, :2]
            except (ValueError, IndexError, TypeError) as exc:
                raise DataError(f"bad polygon coordinates ({exc})") from exc
            rr, cc = draw.polygon(xy[:, 1] / downsample[1] - 0.5, xy[:, 0] / downsample[0] - 0.5, shape)
            poly[rr, cc] = k == 0  # first ring: outside boundary; further rings: holes
        out |= poly
    return out


def save_mask(mask: TissueMask, png_path: str | Path | None, geojson_path: str | Path | None) -> None:
    """Write the mask as a black/white PNG and/or QuPath GeoJSON (atomic writes; None skips one)."""
    if png_path is not None:
        with atomic_path(png_path) as tmp:
            Image.fromarray(mask.mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    if geojson_path is not None:
        atomic_write_json(geojson_path, mask_to_geojson(mask))
