"""Whole-slide images: one reader over OpenSlide, tiffslide and plain images.

:func:`open_slide` gives a :class:`Slide` whatever the format: pyramidal slides through OpenSlide
(SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...), tiffslide when OpenSlide refuses the file (for
example a pyramid stored as TIFF SubIFDs), and PIL / tifffile for plain single-level PNG, JPEG and
stripped TIFF files. Coordinates are level-0 pixels, ``(x, y) = (column, row)``; sizes are
``(width, height)``; pixels come back as ``[h, w, 3] uint8`` RGB with anything outside the slide or
transparent read as white.

Resolution: ``mpp`` (µm per level-0 pixel) comes from ``openslide.mpp-x`` / ``tiffslide.mpp-x`` (or
the TIFF resolution tags of a plain TIFF), ``magnification`` from ``openslide.objective-power`` /
``aperio.AppMag``. The ``mpp`` and ``magnification`` overrides are used only where the metadata lacks
the value; a missing one is derived from the other with the usual ``magnification = 10 / mpp``.

Worker processes: a :class:`Slide` pickles as its path and options and reopens on unpickling, and a
slide used in a forked child reopens its file handle on first use (the library handles are never
shared across processes). A DataLoader dataset can therefore hold a :class:`Slide` (or just its path)
and read from it in any number of workers, with ``fork`` or ``spawn``.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medattn.errors import DataError

SLIDE_SUFFIXES: tuple[str, ...] = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif",
                                   ".svslide", ".png", ".jpg", ".jpeg")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_TIFF_SUFFIXES = (".tif", ".tiff")
BACKENDS = ("auto", "openslide", "tiffslide", "image")


def slide_suffix(path: str | Path) -> str | None:
    """The slide suffix of ``path`` (lower case, e.g. ``.svs``), or None if it is not a slide file."""
    name = Path(path).name.lower()
    return next((s for s in SLIDE_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def _white_over(arr: np.ndarray) -> np.ndarray:
    """Any ``[h, w]``, ``[h, w, 1|3|4]`` uint8 array → ``[h, w, 3]`` uint8 RGB, alpha composited over white."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        rgb = arr[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def _as_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return np.rint(arr / 257.0).astype(np.uint8)
    raise DataError(f"unsupported pixel type {arr.dtype} (expected 8- or 16-bit RGB)", path)


def _float_prop(props: dict[str, str], *keys: str) -> float | None:
    for key in keys:
        try:
            value = float(props.get(key, ""))
        except ValueError:
            continue
        if math.isfinite(value) and value > 0:
            return value
    return None


def _check_tiff_complete(path: Path) -> None:
    """Raise ValueError if a TIFF's pages point past the end of the file (a truncated copy)."""
    import tifffile

    size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:
        if tif.pages.first.offset >= size:
            raise ValueError("first page beyond the end of the file")
        for page in tif.pages:
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
            if ends and max(ends) > size:
                raise ValueError(f"truncated: image data ends at byte {max(ends)} but the file has {size}")
        if tif.pages.next_page_offset not in (None, 0) and tif.pages.next_page_offset >= size:
            raise ValueError("truncated: a page lies beyond the end of the file")


class Slide:
    """An open whole-slide image (context manager). Use :func:`open_slide` to make one.

    Attributes: ``path``, ``slide_id`` (file name without the slide suffix), ``backend``
    (``openslide`` | ``tiffslide`` | ``image``), ``level_count``, ``level_dimensions`` (``(width,
    height)`` per level), ``level_downsamples``, ``dimensions`` (level 0), ``mpp``,
    ``magnification`` and ``properties`` (the library's metadata as strings).
    """

    def __init__(self, path: str | Path, mpp: float | None = None, magnification: float | None = None,
                 backend: str = "auto") -> None:
        self.path = Path(path)
        suffix = slide_suffix(self.path) or self.path.suffix.lower()
        self.slide_id = self.path.name[: len(self.path.name) - len(suffix)] if suffix else self.path.name
        self._options = {"mpp": mpp, "magnification": magnification, "backend": backend}
        if backend not in BACKENDS:
            raise DataError(f"unknown slide backend {backend!r} (expected one of {', '.join(BACKENDS)})", path)
        if not self.path.is_file():
            raise DataError("slide file not found" if not self.path.exists() else "not a file", self.path)
        self._lock = threading.Lock()
        self._handle: Any = None
        self._pixels: np.ndarray | None = None
        self.backend = self._open(backend)
        self._pid = os.getpid()
        self._describe(mpp, magnification)

    # ------------------------------------------------------------------ opening
    def _open(self, backend: str) -> str:
        suffix = self.path.suffix.lower()
        if backend == "image" or (backend == "auto" and suffix in _IMAGE_SUFFIXES):
            self._open_image()
            return "image"
        errors: list[str] = []
        if backend in ("auto", "openslide"):
            try:
                import openslide

                self._handle = openslide.OpenSlide(str(self.path))
                return "openslide"
            except Exception as exc:
                errors.append(f"openslide: {str(exc).strip() or type(exc).__name__}")
        if backend == "auto" and suffix in _TIFF_SUFFIXES and self._single_level_tiff():
            self._open_image()  # a plain (stripped) TIFF that OpenSlide refuses
            return "image"
        if backend in ("auto", "tiffslide"):
            try:
                import tiffslide

                _check_tiff_complete(self.path)
                self._handle = tiffslide.TiffSlide(str(self.path))
                self._handle.level_dimensions  # noqa: B018 - parses the pyramid now, not on first read
                return "tiffslide"
            except Exception as exc:
                errors.append(f"tiffslide: {str(exc).strip() or type(exc).__name__}")
        raise DataError(f"not a readable slide ({'; '.join(errors)})", self.path)

    def _single_level_tiff(self) -> bool:
        try:
            import tifffile

            with tifffile.TiffFile(self.path) as tif:
                return len(tif.series) >= 1 and len(tif.series[0].levels) == 1 and not tif.pages.first.is_tiled
        except Exception:
            return False

    def _open_image(self) -> None:
        props: dict[str, str] = {"image.format": self.path.suffix.lower().lstrip(".")}
        try:
            if self.path.suffix.lower() in _TIFF_SUFFIXES:
                import tifffile

                with tifffile.TiffFile(self.path) as tif:
                    page = tif.pages.first
                    arr = page.asarray()
                    if page.planarconfig == 2 and arr.ndim == 3:  # separate planes: [S, H, W]
                        arr = np.moveaxis(arr, 0, -1)
                    unit, xres = page.tags.get("ResolutionUnit"), page.tags.get("XResolution")
                    if unit is not None and int(unit.value) == 3 and xres is not None:  # centimetre
                        num, den = xres.value
                        if num > 0 and den > 0:
                            props["image.mpp"] = repr(1e4 * den / num)
            else:
                with Image.open(self.path) as im:
                    im.load()
                    if im.mode not in ("RGB", "RGBA", "L", "LA"):
                        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                    arr = np.asarray(im)
                    if arr.ndim == 3 and arr.shape[2] == 2:  # LA
                        arr = np.concatenate([np.repeat(arr[..., :1], 3, axis=2), arr[..., 1:]], axis=2)
        except DataError:
            raise
        except Image.DecompressionBombError as exc:
            raise DataError(f"image too large to read at once ({exc}); convert it to a pyramidal TIFF",
                            self.path) from exc
        except Exception as exc:
            raise DataError(f"not a readable image ({str(exc).strip() or type(exc).__name__})", self.path) from exc
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise DataError(f"unsupported image shape {arr.shape} (expected grey, RGB or RGBA)", self.path)
        self._pixels = _white_over(_as_uint8(arr, self.path))
        self.properties = props

    def _describe(self, mpp: float | None, magnification: float | None) -> None:
        if self.backend == "image":
            assert self._pixels is not None
            h, w = self._pixels.shape[:2]
            self.level_dimensions: list[tuple[int, int]] = [(w, h)]
            self.level_downsamples: list[float] = [1.0]
        else:
            h = self._handle
            self.properties = {str(k): str(v) for k, v in dict(h.properties).items() if v is not None}
            self.level_dimensions = [(int(w), int(hh)) for w, hh in h.level_dimensions]
            self.level_downsamples = [float(d) for d in h.level_downsamples]
        self.level_count = len(self.level_dimensions)
        self.dimensions = self.level_dimensions[0]
        props = self.properties
        meta_mpp = _float_prop(props, "openslide.mpp-x", "tiffslide.mpp-x", "image.mpp", "aperio.MPP")
        meta_mag = _float_prop(props, "openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag")
        mpp = meta_mpp or mpp
        mag = meta_mag or magnification
        if mpp is None and mag is None:
            raise DataError("no microns-per-pixel or magnification in the slide metadata; set slide.mpp "
                            "(or slide.magnification) in the config or pass --mpp / --magnification", self.path)
        self.mpp = float(mpp if mpp is not None else 10.0 / mag)  # type: ignore[operator]
        self.magnification = float(mag if mag is not None else 10.0 / self.mpp)

    # ------------------------------------------------------------------ processes and lifetime
    def _backend_handle(self) -> Any:
        if self._pid != os.getpid() and self._handle is not None:  # forked child: never share the handle
            self._handle = None
            self._open(self.backend)
            self._lock = threading.Lock()
            self._pid = os.getpid()
        if self._handle is None and self._pixels is None:
            raise DataError("slide is closed", self.path)
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), **self._options, "resolved_backend": self.backend}

    def __setstate__(self, state: dict[str, Any]) -> None:
        backend = state["resolved_backend"] if state["backend"] == "auto" else state["backend"]
        self.__init__(state["path"], state["mpp"], state["magnification"], backend)  # type: ignore[misc]
        self._options["backend"] = state["backend"]

    def close(self) -> None:
        """Release the file handle (reading afterwards raises DataError)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pixels = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Slide({str(self.path)!r}, backend={self.backend!r}, dimensions={self.dimensions}, "
                f"levels={self.level_count}, mpp={self.mpp:g}, magnification={self.magnification:g})")

    # ------------------------------------------------------------------ reading
    def best_level_for_downsample(self, downsample: float) -> int:
        """The deepest level whose downsample is <= ``downsample`` (level 0 if none)."""
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + 1e-6)]
        return max(ok, key=lambda i: self.level_downsamples[i]) if ok else 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Pixels ``[h, w, 3] uint8`` of ``level`` starting at the level pixel containing ``location``.

        ``location`` is the level-0 ``(x, y)`` of the top-left corner; the region starts at level
        pixel ``(floor(x / ds), floor(y / ds))`` (``ds`` = the level's downsample) on every backend;
        ``size`` = ``(w, h)`` in pixels of ``level``. Outside the slide and transparent pixels are white.
        """
        if not 0 <= level < self.level_count:
            raise DataError(f"level {level} does not exist (the slide has {self.level_count})", self.path)
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise DataError(f"region size must be positive, got {size}", self.path)
        ds = self.level_downsamples[level]
        lx, ly = math.floor(location[0] / ds), math.floor(location[1] / ds)
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x0 >= x1 or y0 >= y1:
            return out
        try:
            part = self._read_inside(level, ds, x0, y0, x1 - x0, y1 - y0)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read level {level} at {tuple(location)} "
                            f"({str(exc).strip() or type(exc).__name__})", self.path) from exc
        out[y0 - ly: y1 - ly, x0 - lx: x1 - lx] = part
        return out

    def _read_inside(self, level: int, ds: float, x: int, y: int, w: int, h: int) -> np.ndarray:
        """An in-bounds block of ``level`` in level pixels → ``[h, w, 3] uint8``."""
        handle = self._backend_handle()
        if self.backend == "image":
            assert self._pixels is not None
            return self._pixels[y: y + h, x: x + w]
        loc = (math.ceil(x * ds), math.ceil(y * ds))  # level-0 point inside level pixel (x, y) (ds >= 1)
        if self.backend == "openslide":
            arr = np.asarray(handle.read_region(loc, level, (w, h)))
        else:
            with self._lock:  # tifffile shares one file handle between reads
                arr = np.asarray(handle.read_region(loc, level, (w, h), as_array=True))
        return _white_over(_as_uint8(arr, self.path))

    def get_thumbnail(self, max_size: int) -> tuple[np.ndarray, tuple[float, float]]:
        """A thumbnail ``[h, w, 3] uint8`` with longest side <= ``max_size`` (never larger than level 0),
        and ``(sx, sy)``: level-0 pixels per thumbnail pixel.

        Read from the deepest level at least as detailed as needed, in bands of rows, and reduced with
        an area (box) filter, so a slide with only a huge level 0 does not need memory for all of it.
        """
        w0, h0 = self.dimensions
        scale = max(w0 / max_size, h0 / max_size, 1.0)
        tw, th = max(1, min(max_size, round(w0 / scale))), max(1, min(max_size, round(h0 / scale)))
        level = self.best_level_for_downsample(scale)
        lw, lh = self.level_dimensions[level]
        fy = lh / th  # level rows per thumbnail row
        rows_per_band = max(1, int(16_000_000 / max(1, lw) / fy))
        bands = []
        for r0 in range(0, th, rows_per_band):
            r1 = min(th, r0 + rows_per_band)
            top, bottom = math.floor(r0 * fy), min(lh, math.ceil(r1 * fy))
            band = self.read_region((0, math.ceil(top * self.level_downsamples[level])), level, (lw, bottom - top))
            box = (0.0, r0 * fy - top, float(lw), min(r1 * fy, lh) - top)
            bands.append(np.asarray(Image.fromarray(band).resize((tw, r1 - r0), Image.Resampling.BOX, box=box)))
        return np.concatenate(bands, axis=0), (w0 / tw, h0 / th)


def open_slide(path: str | Path, mpp: float | None = None, magnification: float | None = None,
               backend: str = "auto") -> Slide:
    """Open a slide (see the module docstring); DataError naming the file if it cannot be read."""
    return Slide(path, mpp=mpp, magnification=magnification, backend=backend)


def find_slides(inputs: Sequence[str | Path]) -> list[Path]:
    """Slide files among ``inputs``: files as given, folders' slide files (sorted, not recursive).

    Hidden files (``.name``, e.g. temporary files) in folders are skipped; duplicates are dropped.
    A missing path, or a file given explicitly without a slide suffix, raises DataError.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(sorted(c for c in p.iterdir()
                                if c.is_file() and not c.name.startswith(".") and slide_suffix(c)))
        elif p.is_file():
            if slide_suffix(p) is None:
                raise DataError(f"not a slide file (expected one of {' '.join(SLIDE_SUFFIXES)})", p)
            found.append(p)
        else:
            raise DataError("no such file or folder", p)
    return list(dict.fromkeys(found))
