"""Counterfactual figures drawn from hand-written CSVs in the documented layout, and slide crops."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medattn.errors import DataError
from medattn.explain.plots import (
    blank_canvas,
    effect_scatter_png,
    read_csv_rows,
    read_patch_crop,
    removal_curve,
    removal_curves_png,
)
from medattn.io.slide import open_slide
from medattn.io.slide_writer import write_pyramidal_tiff

OUTPUTS = ["p_normal", "p_tumour"]


def _write(path: Path, rows: list[dict]) -> Path:
    cols = ["experiment", "round", "patch_index", "x", "y", *OUTPUTS, "delta"]
    if any("seed" in r for r in rows):
        cols.insert(1, "seed")
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def _row(exp: str, rnd: int, idx: int, p: float, seed: int | None = None) -> dict:
    r = {"experiment": exp, "round": rnd, "patch_index": idx, "x": max(idx, 0) * 256, "y": 0,
         "p_normal": 1 - p, "p_tumour": p, "delta": p - 0.9}
    if seed is not None:
        r["seed"] = seed
    return r


def _tables(tmp_path: Path) -> dict[str, list[dict[str, str]]]:
    # 10-patch bag, baseline p_tumour 0.9; greedy removes 2 patches per round
    greedy = [_row("greedy_necessity", 0, -1, 0.9)] + [
        _row("greedy_necessity", r, i, p) for r, i, p in [(1, 3, 0.5), (1, 7, 0.5), (2, 1, 0.2), (2, 2, 0.2)]]
    ranked = [_row("ranked_removal", 0, -1, 0.9)] + [
        _row("ranked_removal", r, i, p) for r, i, p in [(1, 3, 0.7), (2, 7, 0.6), (2, 1, 0.6)]]
    rand = [_row("random_removal", 0, -1, 0.9, s) for s in (0, 1)] + [
        _row("random_removal", r, i, p, s) for s, r, i, p in
        [(0, 1, 5, 0.88), (0, 2, 6, 0.86), (1, 1, 0, 0.9), (1, 2, 9, 0.8)]]
    for name, rows in (("greedy_necessity", greedy), ("ranked_removal", ranked), ("random_removal", rand)):
        _write(tmp_path / f"{name}.csv", rows)
    return {name: read_csv_rows(tmp_path / f"{name}.csv")
            for name in ("greedy_necessity", "ranked_removal", "random_removal")}


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> bool:
    return bool((np.abs(pixels - np.array(rgb)).max(-1) <= tol).sum() > 20)


def test_removal_curve_counts_distinct_removed_patches_per_round(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    curves = removal_curve(tables["greedy_necessity"], "p_tumour")
    (x, y), = curves.values()
    np.testing.assert_array_equal(x, [0, 2, 4])
    np.testing.assert_allclose(y, [0.9, 0.5, 0.2])
    ranked = removal_curve(tables["ranked_removal"], "p_normal")[""]
    np.testing.assert_array_equal(ranked[0], [0, 1, 3])
    np.testing.assert_allclose(ranked[1], [0.1, 0.3, 0.4])
    seeds = removal_curve(tables["random_removal"], "p_tumour")
    assert sorted(seeds) == ["0", "1"]
    np.testing.assert_allclose(seeds["1"][1], [0.9, 0.9, 0.8])


def test_removal_curves_figure_draws_all_three_experiments(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    px = _pixels(removal_curves_png(tables, "p_tumour", n_patches=10, threshold=0.5))
    assert px.shape[0] > 200 and px.shape[1] > 300
    assert _has_colour(px, (214, 39, 40))  # greedy (tab:red)
    assert _has_colour(px, (31, 119, 180))  # attention-ranked (tab:blue)
    assert _has_colour(px, (127, 127, 127))  # random mean (tab:gray)
    only_greedy = _pixels(removal_curves_png({"greedy_necessity": tables["greedy_necessity"]}, "p_tumour", 10,
                                             percent=False))
    assert _has_colour(only_greedy, (214, 39, 40)) and not _has_colour(only_greedy, (31, 119, 180))
    with pytest.raises(DataError, match="no removal experiment"):
        removal_curves_png({"single_patch": tables["greedy_necessity"]}, "p_tumour", 10)
    with pytest.raises(DataError, match="p_missing"):
        removal_curves_png(tables, "p_missing", 10)


def test_missing_csv_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothing\.csv"):
        read_csv_rows(tmp_path / "nothing.csv")


def test_effect_scatter_highlights_and_checks_lengths() -> None:
    rng = np.random.default_rng(0)
    att = rng.normal(size=50)
    eff = -0.1 * att + rng.normal(scale=0.01, size=50)
    px = _pixels(effect_scatter_png(att, eff, "p_tumour", highlight=eff < np.sort(eff)[5]))
    assert _has_colour(px, (214, 39, 40), tol=30) and _has_colour(px, (31, 119, 180), tol=60)
    with pytest.raises(DataError, match="differ in length"):
        effect_scatter_png(att, eff[:10], "p_tumour")


def test_blank_canvas_covers_all_patches() -> None:
    canvas, (sx, sy) = blank_canvas(np.array([[0, 0], [3000, 1000]]), 1000, max_size=400)
    assert canvas.shape == (200, 400, 3) and sx == sy == 10.0 and (canvas == 255).all()


def test_read_patch_crop_reads_the_patch_at_the_bag_level(tmp_path: Path) -> None:
    img = np.full((1024, 1024, 3), 255, np.uint8)
    img[256:512, 512:768] = (200, 30, 30)  # a red block at level-0 (x=512, y=256), 256 px wide
    path = write_pyramidal_tiff(tmp_path / "s.tif", img, mpp=0.5, compression="zlib")
    with open_slide(path) as slide:
        assert slide.level_count >= 2
        crop = read_patch_crop(slide, (512, 256), 1, 256, 64)  # read 128 px at level 1, resize to 64
        assert crop.shape == (64, 64, 3)
        assert np.abs(crop[4:-4, 4:-4].astype(int) - (200, 30, 30)).max() <= 10
        beside = read_patch_crop(slide, (0, 0), 0, 256, 256)
        assert (beside > 245).all()
