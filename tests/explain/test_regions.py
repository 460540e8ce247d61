"""Patches inside a region given as GeoJSON (level-0 px) or a mask image stretched over the slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medattn.errors import DataError
from medattn.explain.regions import inside_fraction, load_region, patches_in_region, region_from_geojson

SLIDE = (2560, 1536)  # level-0 width, height: a 10 x 6 grid of 256-px patches


def grid() -> np.ndarray:
    ys, xs = np.mgrid[0:6, 0:10]
    return np.stack([xs.ravel() * 256, ys.ravel() * 256], axis=1).astype(np.int64)  # [60, 2] (x, y)


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_geojson_region_selects_the_covered_patches_with_holes() -> None:
    coords = grid()
    # patch columns 2..5, rows 1..3, minus a hole over the patch at column 3, row 2
    geojson = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"objectType": "annotation"},
        "geometry": {"type": "Polygon", "coordinates": [square(512, 256, 1536, 1024),
                                                        square(768, 512, 1024, 768)]}}]}
    region = region_from_geojson(geojson, SLIDE)
    inside = patches_in_region(coords, 256, region)
    want = {(c, r) for c in range(2, 6) for r in range(1, 4)} - {(3, 2)}
    assert {(int(x) // 256, int(y) // 256) for x, y in coords[inside]} == want
    assert region.area_level0 == pytest.approx(11 * 256 * 256, rel=0.01)


def test_partial_cover_and_min_inside() -> None:
    coords = np.array([[0, 0], [256, 0]])
    geojson = {"type": "Polygon", "coordinates": [square(128, 0, 512, 256)]}  # half of patch 0, all of 1
    region = region_from_geojson(geojson, (512, 256))
    np.testing.assert_allclose(inside_fraction(coords, 256, region), [0.5, 1.0], atol=0.01)
    assert patches_in_region(coords, 256, region, 0.5).tolist() == [True, True]
    assert patches_in_region(coords, 256, region, 0.75).tolist() == [False, True]


def test_mask_image_is_stretched_over_the_slide(tmp_path: Path) -> None:
    mask = np.zeros((12, 20), dtype=np.uint8)  # 128 level-0 px per mask px
    mask[2:8, 4:12] = 255  # columns 2..5, rows 1..3 of the patch grid
    Image.fromarray(mask).save(tmp_path / "tumour.png")
    region = load_region(tmp_path / "tumour.png", SLIDE)
    assert region.downsample == (128.0, 128.0)
    inside = patches_in_region(grid(), 256, region)
    assert inside.sum() == 12
    assert {(int(x) // 256, int(y) // 256) for x, y in grid()[inside]} == {(c, r) for c in range(2, 6)
                                                                           for r in range(1, 4)}
    (tmp_path / "tumour.geojson").write_text(json.dumps(
        {"type": "Polygon", "coordinates": [square(512, 256, 1536, 1024)]}))
    from_json = patches_in_region(grid(), 256, load_region(tmp_path / "tumour.geojson", SLIDE))
    np.testing.assert_array_equal(from_json, inside)


def test_bad_regions_give_one_line_errors(tmp_path: Path) -> None:
    far = {"type": "Polygon", "coordinates": [square(9000, 9000, 9500, 9500)]}
    with pytest.raises(DataError, match=r"lies outside the slide \(2560 x 1536 px at level 0\)"):
        region_from_geojson(far, SLIDE)
    (tmp_path / "far.geojson").write_text(json.dumps(far))
    with pytest.raises(DataError, match=r"far\.geojson: the region .* lies outside the slide"):
        load_region(tmp_path / "far.geojson", SLIDE)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(DataError, match=r"empty\.png: the region mask is empty"):
        load_region(tmp_path / "empty.png", SLIDE)
    with pytest.raises(DataError, match=r"missing\.png: region file not found"):
        load_region(tmp_path / "missing.png", SLIDE)
    (tmp_path / "broken.geojson").write_text("{not json")
    with pytest.raises(DataError, match=r"broken\.geojson: not a readable GeoJSON file"):
        load_region(tmp_path / "broken.geojson", SLIDE)
    (tmp_path / "region.txt").write_text("x")
    with pytest.raises(DataError, match=r"unsupported region file type '\.txt'"):
        load_region(tmp_path / "region.txt", SLIDE)
    with pytest.raises(DataError, match="has no polygon"):
        region_from_geojson({"type": "FeatureCollection", "features": []}, SLIDE)
