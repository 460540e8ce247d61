"""Write an RGB image as a tiled, pyramidal TIFF that OpenSlide and tiffslide both read as a slide.

Layout (one IFD per level in the main chain, each level half the size of the one before):

- with a ``magnification`` (Aperio SVS layout, read by OpenSlide's ``aperio`` driver and by
  tiffslide): IFD 0 = level 0, IFD 1 = a small stripped thumbnail, IFD 2.. = levels 1..; the
  ImageDescription is ``Aperio Image Library ...|AppMag = <magnification>|MPP = <mpp>``, so both
  readers report ``openslide.objective-power`` and ``openslide.mpp-x``/``-y``;
- without one (generic pyramidal TIFF, OpenSlide's ``generic-tiff`` driver): IFD 0.. = levels 0..,
  the reduced levels marked ``NewSubfileType = 1``; no magnification is stored, so readers derive it.

``mpp`` is always written in the resolution tags as well (``ResolutionUnit`` = centimetre,
``XResolution`` = 10⁴ / mpp px/cm), which is where OpenSlide's generic-tiff driver and tiffslide look
for it. ``mpp=None`` writes no physical size at all (``ResolutionUnit`` none), for testing what readers
do with slides that lack it. The file is written under a temporary name and renamed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tifffile

from medattn.errors import ConfigError, DataError
from medattn.io.atomic import atomic_path

__all__ = ["COMPRESSIONS", "pyramid_levels", "write_pyramidal_tiff"]

#: accepted ``compression`` values → tifffile's names (``none`` stores raw tiles)
COMPRESSIONS = {"jpeg": "jpeg", "lzw": "lzw", "zlib": "zlib", "deflate": "zlib", "none": None}
_THUMBNAIL_MAX = 1024  # longest side of the Aperio thumbnail IFD


def _halve(image: np.ndarray) -> np.ndarray:
    """2×2 box average of ``[H, W, 3]`` uint8 → ``[ceil(H/2), ceil(W/2), 3]`` (odd edges replicated)."""
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    h2, w2 = image.shape[0] // 2, image.shape[1] // 2
    acc = image.reshape(h2, 2, w2, 2, 3).astype(np.uint16).sum(axis=(1, 3))
    return ((acc + 2) // 4).astype(np.uint8)


def pyramid_levels(image: np.ndarray, min_size: int = 512) -> list[np.ndarray]:
    """Level 0 and its successive halvings while the longest side of the next one stays >= ``min_size``.

    Args:
        image: ``[H, W, 3]`` uint8.
        min_size: smallest longest side a reduced level may have.

    Returns:
        ``[image, [ceil(H/2), ceil(W/2), 3], ...]``; just ``[image]`` when the image is small.
    """
    levels = [image]
    while math.ceil(max(levels[-1].shape[:2]) / 2) >= min_size:
        levels.append(_halve(levels[-1]))
    return levels


def _check(path: Path, image: np.ndarray, mpp: float | None, magnification: float | None, tile: int,
           min_size: int, compression: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"slide image must be [H, W, 3] uint8, got shape {image.shape} {image.dtype}", path)
    if min(image.shape[:2]) < 1:
        raise DataError(f"slide image is empty (shape {image.shape})", path)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp must be a positive number, got {mpp}", path)
    if magnification is not None and not (math.isfinite(magnification) and magnification > 0):
        raise ConfigError(f"magnification must be a positive number, got {magnification}", path)
    if tile < 16 or tile % 16:
        raise ConfigError(f"tile must be a multiple of 16 (TIFF rule), got {tile}", path)
    if min_size < 1:
        raise ConfigError(f"min_size must be >= 1, got {min_size}", path)
    if compression not in COMPRESSIONS:
        raise ConfigError(f"unknown compression {compression!r}; choose one of {sorted(COMPRESSIONS)}", path)


def _aperio_description(image: np.ndarray, tile: int, compression: str, mpp: float | None,
                        magnification: float) -> str:
    h, w = image.shape[:2]
    fields = [f"AppMag = {magnification:g}"] + ([f"MPP = {mpp:.6g}"] if mpp is not None else [])
    head = f"Aperio Image Library medattn\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) {compression.upper()}/RGB"
    return "|".join([head, *fields, "Title = medattn synthetic slide"])


def write_pyramidal_tiff(path: str | Path, image: np.ndarray, mpp: float | None,
                         magnification: float | None = None, tile: int = 256, min_size: int = 512,
                         compression: str = "jpeg", *, quality: int = 90) -> Path:
    """Write ``image`` as a tiled pyramidal TIFF slide (see the module notes for the layout).

    Args:
        path: the ``.tif``/``.tiff``/``.svs`` file to write (parent folders are created).
        image: ``[H, W, 3]`` uint8 RGB, level 0.
        mpp: µm per pixel at level 0, or None to store no physical pixel size.
        magnification: objective power at level 0 (Aperio ``AppMag``), or None for a generic TIFF.
        tile: tile side in pixels (a multiple of 16).
        min_size: levels are halved while the longest side of the next level stays >= ``min_size``.
        compression: ``jpeg`` (lossy, ``quality``), ``lzw``, ``zlib``/``deflate`` (lossless) or ``none``.
        quality: JPEG quality 1..100.

    Returns:
        ``path``.

    Raises:
        DataError: ``image`` is not ``[H, W, 3]`` uint8. ConfigError: a bad option.
    """
    path = Path(path)
    image = np.asarray(image)
    _check(path, image, mpp, magnification, tile, min_size, compression)
    levels = pyramid_levels(np.ascontiguousarray(image), min_size)
    codec = COMPRESSIONS[compression]
    args: dict = {"photometric": "rgb", "compression": codec, "metadata": None}
    if codec == "jpeg":
        args["compressionargs"] = {"level": int(quality)}

    def resolution(level: int) -> dict:
        if mpp is None:
            return {"resolution": (1, 1), "resolutionunit": "NONE"}
        scale = levels[0].shape[1] / levels[level].shape[1]
        return {"resolution": (1e4 / (mpp * scale), 1e4 / (mpp * scale)), "resolutionunit": "CENTIMETER"}

    aperio = magnification is not None
    desc = _aperio_description(levels[0], tile, compression, mpp, magnification) if aperio else None
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=levels[0].nbytes > 2**31) as tw:
        tw.write(levels[0], tile=(tile, tile), description=desc, **resolution(0), **args)
        if aperio:  # Aperio: IFD 1 is the thumbnail (stripped), then the reduced levels, NewSubfileType 0
            thumb = next((lv for lv in levels if max(lv.shape[:2]) <= _THUMBNAIL_MAX), levels[-1])
            while max(thumb.shape[:2]) > _THUMBNAIL_MAX:
                thumb = _halve(thumb)
            tw.write(thumb, rowsperstrip=16, description="Aperio Image Library medattn thumbnail", **args)
        for i, level in enumerate(levels[1:], start=1):
            tw.write(level, tile=(tile, tile), subfiletype=0 if aperio else 1, description=desc,
                     **resolution(i), **args)
    return path
