"""Real slide files for tests: tiled pyramidal TIFFs (through :mod:`medattn.io.slide_writer`).

``write_pyramid(path, image, mpp=..., magnification=...)`` writes a small lossless pyramid (each level
half the previous, 2 x 2 box averages, see :func:`pyramid_levels`) that OpenSlide and tiffslide both
read: a generic tiled TIFF with ``mpp`` in the resolution tags, or an Aperio-style file (``AppMag``
in the description) when ``magnification`` is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medattn.io.slide_writer import pyramid_levels, write_pyramidal_tiff

__all__ = ["pyramid_levels", "read_corner", "read_corner_into", "tissue_phantom", "write_pyramid"]


def write_pyramid(path: str | Path, image: np.ndarray, mpp: float | None = None,
                  magnification: float | None = None, tile: int = 128, compression: str = "none",
                  min_size: int = 64) -> Path:
    """Write ``image`` ``[H, W, 3] uint8`` as a tiled pyramidal TIFF; levels = ``pyramid_levels(image, min_size)``."""
    return write_pyramidal_tiff(path, image, mpp, magnification, tile=tile, min_size=min_size,
                                compression=compression)


def tissue_phantom(height: int = 512, width: int = 768, seed: int = 0) -> np.ndarray:
    """``[H, W, 3] uint8``: glass (near-white, slight noise) on the left half, pink/purple stained
    "tissue" with texture on the right half, exactly from column ``width // 2``."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(242, 3, (height, width, 3)), 0, 255)
    half = width // 2
    texture = rng.normal(0, 12, (height, width - half, 1))
    stain = np.array([200.0, 110.0, 170.0])
    img[:, half:] = np.clip(stain + texture, 0, 255)
    return img.astype(np.uint8)


def read_corner(slide) -> bytes:
    """Pixels of an 8 x 8 level-1 region of ``slide`` (a worker function for multiprocessing tests)."""
    return slide.read_region((100, 100), 1, (8, 8)).tobytes()


def read_corner_into(slide, queue) -> None:
    """:func:`read_corner` put on ``queue`` (a fork child's target: ``slide`` is inherited, not pickled)."""
    queue.put(read_corner(slide))
