"""Heatmaps: patch geometry on the thumbnail grid, overlap averaging, scalings, colour bar and title."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps

from medattn.engine.heatmap import render_heatmap, scale_scores, score_map


def _grey(h: int = 60, w: int = 80) -> np.ndarray:
    return np.full((h, w, 3), 200, np.uint8)


def test_top_patch_is_hottest_at_its_place() -> None:
    # level-0 patches of 64 px, thumbnail downsample 8 → 8×8 thumbnail px squares
    coords = np.array([[0, 0], [64, 0], [128, 64], [320, 256]])
    scores = np.array([0.1, -2.0, 5.0, 0.3])  # patch 2 is the top patch: thumbnail x 16..24, y 8..16
    mean, covered = score_map((60, 80), (8.0, 8.0), coords, 64, scale_scores(scores, "rank"))
    assert covered.sum() == 4 * 64
    ys, xs = np.nonzero(mean == mean.max())
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (8, 15, 16, 23)
    img = render_heatmap(_grey(), (8.0, 8.0), coords, 64, scores, alpha=1.0, colour_bar=False)
    assert img.shape == (60, 80, 3)
    red = np.rint(np.asarray(colormaps["jet"](1.0)[:3]) * 255)
    assert img[12, 20].tolist() == red.tolist()  # jet's top colour at the top patch
    assert img[40, 10].tolist() == [200, 200, 200]  # no patch: thumbnail unchanged


def test_anisotropic_downsample_and_partial_pixels() -> None:
    # x: 10 level-0 px per thumbnail px, y: 5; a 30-px patch at (15, 12) spans x [1, 5), y [2, 9)
    mean, covered = score_map((20, 20), (10.0, 5.0), np.array([[15, 12]]), 30, np.array([0.7]))
    ys, xs = np.nonzero(covered)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (2, 8, 1, 4)
    assert np.allclose(mean[covered], 0.7)


def test_overlapping_patches_are_averaged() -> None:
    coords = np.array([[0, 0], [4, 0]])  # downsample 1, size 8: overlap in x 4..8
    mean, covered = score_map((8, 16), (1.0, 1.0), coords, 8, np.array([0.2, 1.0]))
    assert mean[0, 2] == pytest.approx(0.2) and mean[0, 6] == pytest.approx(0.6)
    assert mean[0, 10] == pytest.approx(1.0) and not covered[0, 13]


def test_scalings() -> None:
    s = np.array([0.0, 2.0, -1.0, 2.0, float("-inf")])
    rank = scale_scores(s, "rank")
    assert rank[:4].tolist() == pytest.approx([1 / 3, 2.5 / 3, 0.0, 2.5 / 3]) and np.isnan(rank[4])
    assert scale_scores(s, "minmax")[:4].tolist() == pytest.approx([1 / 3, 1.0, 0.0, 1.0])
    assert scale_scores(s, "raw")[:3].tolist() == pytest.approx([0.5, 1 / (1 + np.exp(-2)), 1 / (1 + np.e)])
    assert scale_scores(np.array([3.0, 3.0]), "minmax").tolist() == [0.5, 0.5]
    assert scale_scores(np.array([3.0]), "rank").tolist() == [1.0]
    with pytest.raises(ValueError, match="scaling"):
        scale_scores(s, "log")


def test_raw_scaling_changes_colours_but_not_geometry() -> None:
    coords = np.array([[0, 0], [16, 0]])
    scores = np.array([-1.0, 1.0])
    rank = render_heatmap(_grey(16, 32), (1.0, 1.0), coords, 16, scores, "rank", alpha=1.0, colour_bar=False)
    raw = render_heatmap(_grey(16, 32), (1.0, 1.0), coords, 16, scores, "raw", alpha=1.0, colour_bar=False)
    jet = colormaps["jet"]
    assert rank[5, 5].tolist() == np.rint(np.asarray(jet(0.0)[:3]) * 255).tolist()
    assert raw[5, 5].tolist() == np.rint(np.asarray(jet(1 / (1 + np.e))[:3]) * 255).tolist()


def test_alpha_blend_title_and_colour_bar() -> None:
    thumb = _grey(100, 200)
    coords, scores = np.array([[0, 0]]), np.array([1.0])
    plain = render_heatmap(thumb, (2.0, 2.0), coords, 20, scores, alpha=0.5, colour_bar=False)
    colour = np.asarray(colormaps["jet"](1.0)[:3]) * 255
    assert plain[5, 5].tolist() == np.rint(0.5 * 200 + 0.5 * colour).tolist()
    titled = render_heatmap(thumb, (2.0, 2.0), coords, 20, scores, alpha=0.5, title="tumour")
    untitled = render_heatmap(thumb, (2.0, 2.0), coords, 20, scores, alpha=0.5)
    title_h = titled.shape[0] - untitled.shape[0]
    assert title_h >= 20 and titled.shape[1] == 200
    assert (titled[:title_h] != 255).any()  # text drawn in the (white) title band
    assert np.array_equal(titled[title_h:], untitled)
    assert np.array_equal(untitled[:100], plain)
    bar = untitled[100:]
    assert bar.shape[0] >= 22
    left, right = bar[5, 2].astype(int), bar[5, 197].astype(int)
    assert left[2] > left[0] and right[0] > right[2]  # colour bar runs blue → red


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="colormap"):
        render_heatmap(_grey(), (1.0, 1.0), np.zeros((1, 2)), 4, np.zeros(1), colormap="nope")
    with pytest.raises(ValueError, match="scores"):
        render_heatmap(_grey(), (1.0, 1.0), np.zeros((2, 2)), 4, np.zeros(1))
