"""Inference output helpers: patch size fallbacks, blank canvases, predictions.csv rebuilt per checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medattn.data.bags import Bag
from medattn.engine.mil_outputs import blank_canvas, patch_size_level0, write_predictions_csv


def _bag(coords: list[tuple[int, int]], **attrs) -> Bag:
    return Bag(np.zeros((len(coords), 3), np.float32), np.asarray(coords, np.int64), attrs)


def test_patch_size_level0_fallbacks() -> None:
    assert patch_size_level0(_bag([(0, 0), (512, 0)], patch_size_level0=512, patch_size=256)) == 512.0
    assert patch_size_level0(_bag([(0, 0), (448, 0), (0, 448), (896, 448)])) == 448.0  # CLAM: grid step
    assert patch_size_level0(_bag([(100, 200)], patch_size=224)) == 224.0
    assert patch_size_level0(_bag([(100, 200)])) == 256.0


def test_blank_canvas_covers_the_patches() -> None:
    canvas, ds = blank_canvas(_bag([(0, 0), (1792, 768)]), 256, 512)  # extent 2048 × 1024
    assert canvas.shape == (256, 512, 3) and ds == (4.0, 4.0) and (canvas == 255).all()
    canvas, ds = blank_canvas(_bag([(0, 0)]), 100, 512)  # small: never upsampled
    assert canvas.shape == (100, 100, 3) and ds == (1.0, 1.0)


def test_predictions_csv_keeps_only_this_checkpoint(tmp_path: Path) -> None:
    for sid, sha, p in (("b", "aaa", 0.25), ("a", "aaa", 0.75), ("c", "other", 0.5)):
        (tmp_path / sid).mkdir()
        rec = {"slide_id": sid, "checkpoint": {"sha256": sha}, "prediction": "tumour" if p > 0.5 else "normal",
               "outputs": {"p_normal": 1 - p, "p_tumour": p}}
        (tmp_path / sid / "prediction.json").write_text(json.dumps(rec))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "prediction.json").write_text("{not json")
    path = write_predictions_csv(tmp_path, "aaa", ["p_normal", "p_tumour"])
    assert path.read_text().splitlines() == ["slide_id,prediction,p_normal,p_tumour",
                                             "a,tumour,0.25,0.75", "b,normal,0.75,0.25"]
