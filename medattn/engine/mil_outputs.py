"""The files slide inference writes: attention tables, PNGs, ``predictions.csv``, heatmap canvases.

See :mod:`medattn.engine.mil_infer` for the layout. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from medattn.data.bags import Bag
from medattn.engine import heatmap
from medattn.io.atomic import atomic_path, atomic_write_text

PREDICTION_FILE = "prediction.json"


def patch_size_level0(bag: Bag) -> float:
    """Patch side in level-0 px: the bag's ``patch_size_level0``, else the coordinates' smallest grid
    step (CLAM bags), else its ``patch_size``, else 256."""
    v = bag.attrs.get("patch_size_level0")
    if isinstance(v, (int, float)) and v > 0:
        return float(v)
    steps = [np.diff(np.unique(bag.coords[:, i])) for i in range(2)]
    steps = [st[st > 0].min() for st in steps if (st > 0).any()]
    if steps:
        return float(min(steps))
    v = bag.attrs.get("patch_size")
    return float(v) if isinstance(v, (int, float)) and v > 0 else 256.0


def blank_canvas(bag: Bag, patch_l0: float, max_size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """:func:`medattn.engine.heatmap.blank_canvas` over a bag's patches."""
    return heatmap.blank_canvas(bag.coords, patch_l0, max_size)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an ``[h, w, 3]`` uint8 image as PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_attention(folder: Path, bag: Bag, pred: dict[str, Any]) -> None:
    """``folder/attention.csv`` and ``folder/attention.h5`` from a bag and :func:`predict_bag`'s result."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patch_index", "x", "y", "attention", "attention_weight"])
    for i, ((x, y), a, aw) in enumerate(zip(bag.coords.tolist(), pred["attention"], pred["attention_weights"])):
        w.writerow([i, x, y, repr(float(a)), repr(float(aw))])
    atomic_write_text(folder / "attention.csv", buf.getvalue())
    with atomic_path(folder / "attention.h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("coords", data=bag.coords.astype(np.int64))
        f.create_dataset("attention", data=np.asarray(pred["attention"], np.float32))
        f.create_dataset("attention_weight", data=np.asarray(pred["attention_weights"], np.float32))
        f.attrs["slide_id"] = str(bag.attrs.get("slide_id") or folder.name)


def write_predictions_csv(out_dir: str | Path, sha256: str, names: list[str]) -> Path:
    """Rebuild ``out_dir/predictions.csv`` from every ``<slide_id>/prediction.json`` of checkpoint ``sha256``."""
    out_dir = Path(out_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide_id", "prediction", *names])
    for path in sorted(out_dir.glob(f"*/{PREDICTION_FILE}")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or (rec.get("checkpoint") or {}).get("sha256") != sha256:
            continue
        outs = rec.get("outputs") or {}
        w.writerow([rec.get("slide_id", path.parent.name), rec.get("prediction") or "",
                    *[repr(float(outs[n])) if n in outs else "" for n in names]])
    target = out_dir / "predictions.csv"
    atomic_write_text(target, buf.getvalue())
    return target
