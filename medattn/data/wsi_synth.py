"""Synthetic H&E-like whole-slide images with planted tumour regions, as real pyramidal TIFFs.

Each slide is rendered in optical density (Beer–Lambert with the Ruifrok–Johnston haematoxylin and
eosin vectors) and converted to RGB:

- background glass (near white) outside irregular tissue pieces, with a few holes (lumens, tears);
- pink eosin stroma with wavy fibres;
- purple round nuclei at normal density (about one per 12 µm cell, ~35 % of cells);
- in ``tumour`` slides, 1–3 planted tumour regions: nuclei in almost every cell, larger, darker and
  more pleomorphic (elongated, varied size), with less stroma between them.

Sizes are physical (µm), so a slide written at another ``mpp`` shows the same structures. The tumour
regions' ground truth is written as QuPath-importable GeoJSON (level-0 pixels, class ``Tumor``) and as
a PNG mask (``ANNOTATION_DOWNSAMPLE`` × smaller, covering the whole slide; each PNG pixel is the
level-0 mask at the centre of its block); normal slides get an empty FeatureCollection and an all-zero
mask. The rendered tissue mask goes to ``tissue/`` the same way (it contains the tumour mask).
Everything is drawn from ``numpy.random.default_rng([seed, slide index])``: same arguments → same files.

Output folder::

    out/slides.csv                      slide_id, patient_id, label (normal|tumour), time, event, slide
    out/slides/<slide_id>.tif           pyramidal TIFF (Aperio layout, JPEG, mpp + magnification)
    out/annotations/<slide_id>.geojson  tumour polygons;  out/annotations/<slide_id>.png  tumour mask
    out/tissue/<slide_id>.png           rendered tissue mask
    out/synth.json                      generator and arguments
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medattn.data.synth_folder import staged_folder, write_csv
from medattn.errors import ConfigError
from medattn.io.atomic import atomic_path, atomic_write_json
from medattn.io.slide_writer import write_pyramidal_tiff

__all__ = ["ANNOTATION_DOWNSAMPLE", "SyntheticSlide", "read_annotation", "render_slide", "write_synthetic_slides"]

GENERATOR = "medattn.data.wsi_synth"
ANNOTATION_DOWNSAMPLE = 8  #: level-0 px per pixel of the PNG masks
_H = np.array([0.65, 0.70, 0.29], np.float32)  # haematoxylin OD vector (Ruifrok & Johnston 2001)
_E = np.array([0.07, 0.99, 0.11], np.float32)  # eosin
_H /= np.linalg.norm(_H)
_E /= np.linalg.norm(_E)
_LOW = 16  # level-0 px per pixel of the low-resolution fields (tissue, fibres)


@dataclass
class SyntheticSlide:
    """One rendered slide.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB, level 0.
        tissue: ``[H, W]`` bool, tissue (tumour included, holes excluded).
        tumour: ``[H, W]`` bool, the planted tumour regions (the polygons rasterised).
        polygons: tumour outlines, each ``[K, 2]`` float level-0 ``(x, y)`` vertices (open ring).
    """

    image: np.ndarray
    tissue: np.ndarray
    tumour: np.ndarray
    polygons: list[np.ndarray]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation, ``shape`` float32."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _upsample(field: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float field to ``size = (W, H)``."""
    return np.array(Image.fromarray(field.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def _tissue_field(rng: np.random.Generator, shape: tuple[int, int], um: float) -> np.ndarray:
    """Low-resolution signed field, > 0 inside tissue: 2–4 blobs with irregular (noisy) outlines."""
    gh, gw = shape
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    field = np.full(shape, -1.0, np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0.25, 0.75) * gh, rng.uniform(0.2, 0.8) * gw
        ry, rx = rng.uniform(0.25, 0.45) * gh, rng.uniform(0.2, 0.4) * gw
        field = np.maximum(field, 1.0 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2)
    return field + 0.35 * _smooth_noise(rng, shape, 60.0 / um)


def _tumour_polygons(rng: np.random.Generator, inside: np.ndarray, um: float,
                     size: tuple[int, int]) -> list[np.ndarray]:
    """1–3 star-shaped outlines (level-0 px) centred deep inside the low-resolution tissue mask ``inside``."""
    depth = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1] * _LOW  # level-0 px to the edge
    w, h = size
    polygons: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(120, 260) / um  # level-0 px
        ok = np.argwhere(depth > 0.6 * radius)
        if len(ok) == 0:
            ok = np.argwhere(depth >= depth.max())
        cy, cx = (ok[rng.integers(len(ok))] + 0.5) * _LOW
        theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        r = np.ones_like(theta)
        for k in range(2, 6):
            r += rng.uniform(0.03, 0.1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        r = radius * np.minimum(r, 1.3)
        x = np.clip(cx + r * np.cos(theta), 1, w - 2)
        y = np.clip(cy + r * np.sin(theta), 1, h - 2)
        polygons.append(np.round(np.stack([x, y], axis=1), 1))
    return polygons


def _rasterise(polygons: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool (``size = (W, H)``) with the polygons (level-0 px) filled."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        draw.polygon([(float(x), float(y)) for x, y in poly], fill=255)
    return np.asarray(canvas) > 0


def _nuclei(rng: np.random.Generator, size: tuple[int, int], tumour: np.ndarray, cell: int, offset: int,
            presence: tuple[float, float], um: float) -> np.ndarray:
    """Nuclei on a grid of ``cell``-px cells shifted by ``offset`` px, at most one per cell, into ``[H, W]``.

    ``tumour`` ``[H, W]`` bool picks each cell's kind at its centre; ``presence`` = (normal, tumour)
    probability that a cell holds a nucleus. Returns the haematoxylin OD ``[H, W]`` float32: each
    nucleus an ellipse with a soft edge, scaled by its darkness (tumour nuclei larger, darker and
    more elongated).
    """
    w, h = size
    ny, nx = math.ceil((h + offset) / cell), math.ceil((w + offset) / cell)
    centres_y = np.clip(np.arange(ny) * cell + cell // 2 - offset, 0, h - 1)
    centres_x = np.clip(np.arange(nx) * cell + cell // 2 - offset, 0, w - 1)
    t = tumour[np.ix_(centres_y, centres_x)]
    present = rng.random((ny, nx)) < np.where(t, presence[1], presence[0])
    radius_um = np.where(t, rng.uniform(3.4, 5.6, (ny, nx)), rng.uniform(2.2, 3.0, (ny, nx)))
    elong = np.where(t, rng.uniform(1.0, 1.8, (ny, nx)), rng.uniform(1.0, 1.2, (ny, nx)))
    a = np.minimum(radius_um * np.sqrt(elong) / um, 0.48 * cell)  # semi-axes, px
    b = np.minimum(radius_um / np.sqrt(elong) / um, a)
    phi = rng.uniform(0, np.pi, (ny, nx))
    cy, cx = rng.uniform(a, cell - a), rng.uniform(a, cell - a)  # inside the cell: nuclei never cut
    dark = np.where(t, rng.uniform(1.3, 1.7, (ny, nx)), rng.uniform(0.8, 1.0, (ny, nx)))

    def per_cell(v: np.ndarray) -> np.ndarray:
        return v.astype(np.float32)[:, None, :, None]

    local = np.arange(cell, dtype=np.float32)
    dy, dx = local[None, :, None, None] - per_cell(cy), local[None, None, None, :] - per_cell(cx)
    cos, sin = per_cell(np.cos(phi) / a), per_cell(np.sin(phi) / a)
    u = dx * cos + dy * sin
    cos, sin = per_cell(np.cos(phi) / b), per_cell(np.sin(phi) / b)
    v = dy * cos - dx * sin
    u *= u
    v *= v
    u += v  # q = (u/a)² + (v/b)², < 1 inside
    np.subtract(np.float32(1.0), u, out=u)
    u *= per_cell(4.0 * dark * present)
    np.clip(u, 0.0, per_cell(dark * present), out=u)  # soft edge, plateau = darkness
    return u.reshape(ny * cell, nx * cell)[offset:offset + h, offset:offset + w]


def render_slide(rng: np.random.Generator, size: tuple[int, int] = (4096, 3072), mpp: float = 0.5,
                 tumour: bool = False) -> SyntheticSlide:
    """Render one synthetic H&E slide of ``size = (W, H)`` level-0 pixels at ``mpp`` µm/px.

    Returns:
        :class:`SyntheticSlide` with the ``[H, W, 3]`` uint8 image, the tissue and tumour masks and the
        tumour outlines (empty for ``tumour=False``).
    """
    w, h = size
    um = mpp  # µm per level-0 px
    gh, gw = math.ceil(h / _LOW), math.ceil(w / _LOW)
    field = _tissue_field(rng, (gh, gw), um * _LOW)
    holes = _smooth_noise(rng, (gh, gw), 25.0 / (um * _LOW)) - 2.3  # > 0 in a few small holes
    polygons = _tumour_polygons(rng, (field > 0.15) & (holes < -0.8), um, size) if tumour else []
    tumour_mask = _rasterise(polygons, size)
    tissue = _upsample(np.minimum(field, -holes), size)  # signed: > 0 in tissue, soft edge below
    tissue *= np.float32(8.0)
    tissue += np.float32(0.5)
    np.clip(tissue, 0.0, 1.0, out=tissue)
    tissue[tumour_mask] = 1.0

    cell = max(8, round(12.0 / um))
    haem = _nuclei(rng, size, tumour_mask, cell, 0, (0.35, 0.8), um)
    np.maximum(haem, _nuclei(rng, size, tumour_mask, cell, cell // 2, (0.06, 0.6), um), out=haem)
    stroma = np.float32(1.0) - np.minimum(haem, np.float32(1.0))  # eosin shows between nuclei

    fine = (math.ceil(h / 8), math.ceil(w / 8))  # fibres: stripes along the level sets of a smooth field
    fibres = _upsample(_smooth_noise(rng, fine, (3.0, 9.0)) * np.float32(1.4 * 6.0 * 8.0 * um / 8.0), size)
    np.sin(fibres * np.float32(2 * np.pi), out=fibres)
    fibres += np.float32(1.0)
    fibres *= fibres  # 0..4, thin bright crests
    eosin = _upsample(_smooth_noise(rng, (gh * 2, gw * 2), 1.0) * np.float32(0.04) + np.float32(0.3), size)
    eosin += np.float32(0.07) * fibres
    eosin[tumour_mask] *= np.float32(0.7)
    eosin *= stroma
    eosin *= tissue
    haem *= tissue
    haem += np.float32(0.06) * tissue

    image = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        od = haem * _H[c]
        od += eosin * _E[c]
        od += np.float32(0.03)
        np.exp(-od, out=od)
        od *= np.float32(255.0)
        image[..., c] = od  # in [0, 255] by construction (od >= 0.03 > 0)
    return SyntheticSlide(image=image, tissue=tissue > 0.5, tumour=tumour_mask, polygons=polygons)


def _geojson(polygons: list[np.ndarray]) -> dict:
    """QuPath-style FeatureCollection of ``Tumor`` annotations (closed rings, level-0 px)."""
    features = []
    for k, poly in enumerate(polygons):
        ring = [[float(x), float(y)] for x, y in poly] + [[float(poly[0, 0]), float(poly[0, 1])]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation", "name": f"tumour_{k + 1}",
                                        "classification": {"name": "Tumor", "color": [200, 0, 0]}}})
    return {"type": "FeatureCollection", "features": features}


def _write_png(path: Path, mask: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG", optimize=False)


def _survival(rng: np.random.Generator, tumour: np.ndarray, burden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exponential event times (months), hazard × e^1.5 for tumour and growing with tumour burden;
    independent exponential censoring tuned to censor about 25 %."""
    hazard = (1.0 / 60.0) * np.exp(1.5 * tumour + 2.0 * burden)
    event_time = rng.exponential(1.0 / hazard)
    lo, hi = 1e-6, 10.0
    for _ in range(60):  # censoring rate c with mean P(C < T) = 0.25
        c = 0.5 * (lo + hi)
        lo, hi = (c, hi) if np.mean(c / (c + hazard)) < 0.25 else (lo, c)
    censor_time = rng.exponential(1.0 / c, size=len(hazard))
    event = (event_time <= censor_time).astype(int)
    return np.round(np.minimum(event_time, censor_time), 2), event


def _check_args(n_slides: int, n_patients: int | None, size: tuple[int, int], mpp: float,
                magnification: float, positive_fraction: float) -> int:
    if n_slides < 1:
        raise ConfigError(f"n_slides must be >= 1, got {n_slides}")
    n_patients = n_slides if n_patients is None else n_patients
    if not 1 <= n_patients <= n_slides:
        raise ConfigError(f"n_patients must be in [1, n_slides={n_slides}], got {n_patients}")
    if len(size) != 2 or min(size) < 256:
        raise ConfigError(f"size must be (width, height) with both >= 256, got {size}")
    if not (mpp > 0 and magnification > 0):
        raise ConfigError(f"mpp and magnification must be > 0, got {mpp}, {magnification}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ConfigError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    return n_patients


def write_synthetic_slides(out: str | Path, n_slides: int = 8, n_patients: int | None = None,
                           size: tuple[int, int] = (4096, 3072), mpp: float = 0.5, magnification: float = 20.0,
                           positive_fraction: float = 0.5, seed: int = 0) -> Path:
    """Write ``n_slides`` synthetic slides with tumour ground truth and a slide table (layout above).

    Slides are assigned to ``n_patients`` patients round-robin (default: one patient per slide); a
    seeded ``round(positive_fraction * n_patients)`` patients are ``tumour`` and all their slides get
    tumour regions. ``time``/``event`` are per patient (shorter for tumour, and for more tumour area).
    ``out`` is built in a temporary folder and swapped in; an existing ``out`` is replaced only when
    empty or written by a medattn synthetic generator.

    Returns:
        ``out/slides.csv``.
    """
    n_patients = _check_args(n_slides, n_patients, tuple(size), mpp, magnification, positive_fraction)
    out = Path(out)
    prng = np.random.default_rng([seed, 1_000_003])
    positive = np.zeros(n_patients, bool)
    positive[prng.permutation(n_patients)[: round(positive_fraction * n_patients)]] = True
    width = max(3, len(str(n_slides - 1)))
    rows, burden = [], np.zeros(n_patients)
    args = {"n_slides": n_slides, "n_patients": n_patients, "size": list(size), "mpp": mpp,
            "magnification": magnification, "positive_fraction": positive_fraction, "seed": seed}
    with staged_folder(out, GENERATOR, args) as tmp:
        for i in range(n_slides):
            slide_id, patient = f"slide_{i:0{width}d}", i % n_patients
            slide = render_slide(np.random.default_rng([seed, i]), tuple(size), mpp, bool(positive[patient]))
            write_pyramidal_tiff(tmp / "slides" / f"{slide_id}.tif", slide.image, mpp, magnification)
            atomic_write_json(tmp / "annotations" / f"{slide_id}.geojson", _geojson(slide.polygons))
            centres = slice(ANNOTATION_DOWNSAMPLE // 2, None, ANNOTATION_DOWNSAMPLE)  # PNG px = block centre
            _write_png(tmp / "annotations" / f"{slide_id}.png", slide.tumour[centres, centres])
            _write_png(tmp / "tissue" / f"{slide_id}.png", slide.tissue[centres, centres])
            burden[patient] = max(burden[patient], slide.tumour.sum() / max(slide.tissue.sum(), 1))
            rows.append([slide_id, f"patient_{patient:0{width}d}", patient])
        times, events = _survival(prng, positive.astype(float), burden)
        table = [[sid, pid, "tumour" if positive[p] else "normal", f"{times[p]:g}", int(events[p]),
                  f"slides/{sid}.tif"] for sid, pid, p in rows]
        write_csv(tmp / "slides.csv", ["slide_id", "patient_id", "label", "time", "event", "slide"], table)
    return out / "slides.csv"


def read_annotation(path: str | Path) -> list[np.ndarray]:
    """The polygons (``[K, 2]`` level-0 px, open rings) of a GeoJSON written by this module."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [np.asarray(f["geometry"]["coordinates"][0][:-1], float) for f in data["features"]]
