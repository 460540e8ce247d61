"""Attention heatmaps: per-patch scores painted over a slide thumbnail.

Each patch covers the square ``[x, x + P) × [y, y + P)`` of level-0 pixels (P = ``patch_size_level0``);
on the thumbnail grid (``downsample`` = level-0 px per thumbnail px) that is the pixel range
``[floor(x / sx), ceil((x + P) / sx))`` (same for y). Where patches overlap their values are averaged.
Scores are stored raw; the display scaling is one of

- ``rank``: percentile rank in [0, 1] (robust, the CLAM default),
- ``minmax``: ``(s − min) / (max − min)`` (0.5 everywhere when all scores are equal),
- ``raw``: ``sigmoid(s)`` of the raw score (comparable across slides).

The coloured map is alpha-blended over the thumbnail where patches are; elsewhere (non-tissue) the
thumbnail shows through unchanged. A title band (the predicted class) is added on top and a colour
bar below, so the returned image is ``[title + h + bar, w, 3]``.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from medattn.evaluate.mil_metrics import average_ranks

SCALINGS = ("rank", "minmax", "raw")


def blank_canvas(coords: np.ndarray, patch_size_level0: float, max_size: int = 1024
                 ) -> tuple[np.ndarray, tuple[float, float]]:
    """A white ``[h, w, 3]`` canvas covering patches ``coords [N, 2]`` (level-0 px) for bags without a
    slide, longest side <= ``max_size`` (never upsampled), and its downsample (level-0 px per pixel)."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    extent = coords.max(axis=0) + patch_size_level0 if len(coords) else np.full(2, float(patch_size_level0))
    ds = max(1.0, float(extent.max()) / max_size)
    w, h = max(1, math.ceil(extent[0] / ds)), max(1, math.ceil(extent[1] / ds))
    return np.full((h, w, 3), 255, np.uint8), (ds, ds)


def scale_scores(scores: np.ndarray, scaling: str = "rank") -> np.ndarray:
    """Raw scores [N] → display values [N] in [0, 1] (see the module docstring). Non-finite scores
    (masked patches) become NaN."""
    if scaling not in SCALINGS:
        raise ValueError(f"heatmap scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    out = np.full(s.shape, np.nan)
    ok = np.isfinite(s)
    v = s[ok]
    if v.size == 0:
        return out
    if scaling == "rank":
        out[ok] = (average_ranks(v) - 1.0) / (v.size - 1) if v.size > 1 else 1.0
    elif scaling == "minmax":
        span = v.max() - v.min()
        out[ok] = (v - v.min()) / span if span > 0 else 0.5
    else:
        out[ok] = 1.0 / (1.0 + np.exp(-v))
    return out


def score_map(shape: tuple[int, int], downsample: tuple[float, float], coords: np.ndarray,
              patch_size_level0: float, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average of ``values`` [N] over the patch squares on an ``[h, w]`` grid.

    Args:
        shape: ``(h, w)`` of the grid (the thumbnail).
        downsample: ``(sx, sy)`` level-0 px per grid px.
        coords: [N, 2] level-0 top-left ``(x, y)``.
        patch_size_level0: patch side in level-0 px.
        values: [N] (NaN entries are skipped).

    Returns:
        ``(mean [h, w] float64 (0 where uncovered), covered [h, w] bool)``.
    """
    h, w = shape
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    keep = np.isfinite(values)
    coords, values = coords[keep], values[keep]
    sx, sy = downsample
    x0 = np.clip(np.floor(coords[:, 0] / sx), 0, w).astype(np.int64)
    y0 = np.clip(np.floor(coords[:, 1] / sy), 0, h).astype(np.int64)
    x1 = np.clip(np.ceil((coords[:, 0] + patch_size_level0) / sx), 0, w).astype(np.int64)
    y1 = np.clip(np.ceil((coords[:, 1] + patch_size_level0) / sy), 0, h).astype(np.int64)
    total = np.zeros((h + 1, w + 1))
    count = np.zeros((h + 1, w + 1))
    for acc, v in ((total, values), (count, np.ones_like(values))):  # 2-D difference arrays
        np.add.at(acc, (y0, x0), v)
        np.add.at(acc, (y0, x1), -v)
        np.add.at(acc, (y1, x0), -v)
        np.add.at(acc, (y1, x1), v)
    total = total.cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(count.cumsum(0).cumsum(1)[:h, :w])
    covered = count > 0
    mean = np.where(covered, total / np.maximum(count, 1.0), 0.0)
    return mean, covered


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _colour_bar(width: int, colormap: str, scaling: str) -> np.ndarray:
    """A [bar_h, width, 3] legend strip: the colormap from 0 (left) to 1 (right) with end labels."""
    height = max(22, min(48, width // 16))
    grad = colormaps[colormap](np.linspace(0.0, 1.0, max(width, 2)))[:, :3]
    strip = np.full((height, width, 3), 255, np.uint8)
    bar_h = height // 2
    strip[2:2 + bar_h] = np.rint(grad[None, :width] * 255).astype(np.uint8)
    img = Image.fromarray(strip)
    draw = ImageDraw.Draw(img)
    font = _font(max(8, height - bar_h - 6))
    labels = {"rank": ("low (rank)", "high"), "minmax": ("min", "max"), "raw": ("0", "1")}[scaling]
    y = 2 + bar_h + 1
    draw.text((2, y), labels[0], fill=(0, 0, 0), font=font)
    right = draw.textlength(labels[1], font=font)
    draw.text((max(2, width - 2 - right), y), labels[1], fill=(0, 0, 0), font=font)
    return np.asarray(img)


def _title_band(width: int, title: str) -> np.ndarray:
    height = max(20, min(40, width // 20))
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((4, 2), title, fill=(0, 0, 0), font=_font(height - 6))
    return np.asarray(img)


def render_heatmap(thumbnail: np.ndarray, downsample: tuple[float, float], coords: np.ndarray,
                   patch_size_level0: float, scores: np.ndarray, scaling: str = "rank", colormap: str = "jet",
                   alpha: float = 0.45, title: str | None = None, colour_bar: bool = True) -> np.ndarray:
    """Paint per-patch ``scores`` [N] (raw) over ``thumbnail`` [h, w, 3] uint8.

    Args:
        downsample: ``(sx, sy)`` level-0 px per thumbnail px.
        coords: [N, 2] level-0 top-left ``(x, y)`` of the patches.
        patch_size_level0: patch side in level-0 px.
        scaling: ``rank``, ``minmax`` or ``raw`` (display only).
        colormap: a matplotlib colormap name.
        alpha: heatmap opacity over the thumbnail, in [0, 1].
        title: text drawn in a band above the image (e.g. the predicted class); None: no band.
        colour_bar: add the legend strip below the image.

    Returns:
        ``[title_h + h + bar_h, w, 3]`` uint8 RGB.
    """
    thumb = np.asarray(thumbnail)
    if thumb.ndim != 3 or thumb.shape[2] != 3:
        raise ValueError(f"thumbnail must be [h, w, 3], got shape {thumb.shape}")
    if colormap not in colormaps:
        raise ValueError(f"unknown matplotlib colormap {colormap!r}")
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    scores = np.asarray(scores).reshape(-1)
    if len(scores) != len(np.asarray(coords).reshape(-1, 2)):
        raise ValueError(f"{len(scores)} scores for {len(np.asarray(coords).reshape(-1, 2))} patches")
    values = scale_scores(scores, scaling)
    mean, covered = score_map(thumb.shape[:2], downsample, coords, patch_size_level0, values)
    colour = colormaps[colormap](mean)[..., :3] * 255.0
    blended = thumb.astype(np.float64)
    blended[covered] = (1.0 - alpha) * blended[covered] + alpha * colour[covered]
    parts = [np.clip(np.rint(blended), 0, 255).astype(np.uint8)]
    width = thumb.shape[1]
    if title is not None:
        parts.insert(0, _title_band(width, title))
    if colour_bar:
        parts.append(_colour_bar(width, colormap, scaling))
    return np.ascontiguousarray(np.concatenate(parts, axis=0))
