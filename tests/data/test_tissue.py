"""Tissue detection, user masks and QuPath GeoJSON on real slide files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from support.slides import tissue_phantom, write_pyramid

from medattn.config.mil_schema import TissueConfig
from medattn.data.tissue import (
    TissueMask,
    detect_tissue,
    geojson_to_mask,
    load_mask,
    mask_to_geojson,
    save_mask,
    tissue_mask_for,
)
from medattn.errors import DataError
from medattn.io.slide import open_slide


@pytest.fixture(scope="module")
def half_slide(tmp_path_factory):
    """A 1536 x 1024 slide (mpp 0.5): glass on the left half, tissue from column 768."""
    path = tmp_path_factory.mktemp("tissue") / "half.tif"
    return write_pyramid(path, tissue_phantom(1024, 1536, seed=1), mpp=0.5)


def _signed_area(ring) -> float:
    xy = np.asarray(ring, float)
    return float(np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]) / 2)


@pytest.mark.parametrize("method", ["otsu", "threshold"])
def test_detection_finds_the_tissue_half_and_nothing_on_glass(half_slide, method):
    with open_slide(half_slide) as s:
        tm = tissue_mask_for(s, TissueConfig(method=method, thumbnail_size=512))
    assert tm.source == "detected" and tm.mask.shape == (341, 512)
    assert tm.downsample == (pytest.approx(3.0), pytest.approx(1024 / 341))
    half = 256  # column 768 at level 0
    assert not tm.mask[:, : half - 1].any()
    assert tm.mask[:, half + 1:].all()


def test_blank_slide_gives_an_empty_mask():
    rng = np.random.default_rng(0)  # glass: brightness noise plus a little colour noise
    glass = 240 + rng.normal(0, 4, (300, 300, 1)) + rng.normal(0, 2, (300, 300, 3))
    glass = np.clip(glass, 0, 255).astype(np.uint8)
    assert not detect_tissue(glass, (4.0, 4.0), 0.5, TissueConfig()).any()


def test_areas_and_radii_are_in_micrometres():
    # thumbnail pixel = 8 level-0 px of 0.5 µm = 4 µm; 16 µm² per pixel
    img = np.full((200, 200, 3), 245, np.uint8)
    tissue = (190, 90, 160)
    img[20:180, 20:180] = tissue
    img[40:46, 40:46] = 245  # 36 px = 576 µm² hole: filled (< max_hole_area_um2)
    img[100:150, 100:150] = 245  # 2500 px = 40000 µm² lumen: kept
    img[5:12, 190:197] = tissue  # 49 px = 784 µm² speck: dropped (< min_area_um2)
    cfg = TissueConfig(blur_sigma=0, close_radius_um=0, open_radius_um=0, min_area_um2=1000,
                       max_hole_area_um2=1000)
    mask = detect_tissue(img, (8.0, 8.0), 0.5, cfg)
    assert mask[40:46, 40:46].all() and not mask[100:150, 100:150].any() and not mask[5:12, 190:197].any()
    assert mask[20:40, 20:180].all()
    # the same picture at another resolution (2 µm per thumbnail px) changes every decision
    mask_fine = detect_tissue(img, (4.0, 4.0), 0.5, cfg)  # hole 144 µm², lumen 10000 µm², speck 196 µm²
    assert mask_fine[40:46, 40:46].all() and not mask_fine[100:150, 100:150].any()
    coarse = detect_tissue(img, (16.0, 16.0), 0.5, cfg)  # hole 2304 µm²: kept; speck 3136 µm²: kept
    assert not coarse[40:46, 40:46].any() and coarse[5:12, 190:197].all()
    # opening with a radius of 5 thumbnail px removes a 4 px wide strip, closing bridges a 4 px gap
    img2 = np.full((100, 100, 3), 245, np.uint8)
    img2[10:90, 10:40] = tissue
    img2[10:90, 44:70] = tissue  # 4 px gap
    img2[10:90, 80:84] = tissue  # 4 px strip
    morph = TissueConfig(blur_sigma=0, close_radius_um=12, open_radius_um=20, min_area_um2=0, fill_holes=False)
    m2 = detect_tissue(img2, (8.0, 8.0), 0.5, morph)
    assert m2[20:80, 40:44].all() and not m2[:, 78:86].any()


def _holey_mask() -> np.ndarray:
    m = np.zeros((120, 160), bool)
    m[10:70, 10:90] = True
    m[30:45, 30:60] = False  # a hole
    yy, xx = np.ogrid[:120, :160]
    m |= (yy - 85) ** 2 + (xx - 125) ** 2 < 22**2  # a disc
    m[100:104, 5:9] = True  # a small square
    return m


def test_geojson_round_trip_keeps_holes_and_level0_coordinates():
    mask = TissueMask(_holey_mask(), (4.0, 2.5), "detected")
    gj = json.loads(json.dumps(mask_to_geojson(mask, name="Tissue")))  # plain JSON
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 3
    rings = sorted((f["geometry"]["coordinates"] for f in gj["features"]), key=len)
    assert [len(r) for r in rings] == [1, 1, 2]  # the rectangle keeps its hole
    for f in gj["features"]:
        assert f["geometry"]["type"] == "Polygon"
        assert f["properties"]["objectType"] == "annotation"
        assert f["properties"]["classification"]["name"] == "Tissue"
        outer, *holes = f["geometry"]["coordinates"]
        assert outer[0] == outer[-1] and _signed_area(outer) > 0
        assert all(_signed_area(h) < 0 for h in holes)
    # the rectangle spans mask columns 10..89, rows 10..69 → level-0 x in [40, 360], y in [25, 175]
    rect = np.asarray(rings[2][0])
    assert rect[:, 0].min() == pytest.approx(40) and rect[:, 0].max() == pytest.approx(360)
    assert rect[:, 1].min() == pytest.approx(25) and rect[:, 1].max() == pytest.approx(175)
    back = geojson_to_mask(gj, mask.mask.shape, mask.downsample)
    boundary = mask.mask ^ ndimage.binary_erosion(mask.mask)
    differ = back ^ mask.mask
    assert not (differ & ~boundary).any()  # equal except boundary pixels
    assert differ.sum() <= 0.02 * boundary.sum()
    assert not back[31:44, 31:59].any()  # the hole stays a hole
    half = geojson_to_mask(gj, (60, 80), (8.0, 5.0))  # another grid: same shapes at half resolution
    assert half[5:15, 5:44].all() and half[5:34, 5:15].all() and not half[16:22, 16:29].any()


def test_user_masks_png_and_geojson(tmp_path, half_slide):
    with open_slide(half_slide) as s:
        # PNG at any size, stretched over the slide: tissue on the right third
        png = np.zeros((64, 96), np.uint8)
        png[:, 64:] = 255
        Image.fromarray(png).save(tmp_path / "half.png")
        tm = tissue_mask_for(s, TissueConfig(mask=str(tmp_path / "{slide_id}.png")))
        assert tm.source == str(tmp_path / "half.png") and tm.downsample == (16.0, 16.0)
        np.testing.assert_array_equal(tm.mask, png > 0)
        # GeoJSON in level-0 px, rasterised on the thumbnail grid
        gj = {"type": "Feature", "properties": {},
              "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [768, 0], [768, 512], [0, 512], [0, 0]]]}}
        (tmp_path / "half.geojson").write_text(json.dumps(gj))
        tg = load_mask(tmp_path / "half.geojson", s, max_size=384)
        assert tg.mask.shape == (256, 384) and tg.downsample == (4.0, 4.0)
        assert tg.mask[:128, :192].all() and tg.mask.sum() == 128 * 192
        # saved PNG + GeoJSON read back as the same mask
        save_mask(tg, tmp_path / "out" / "m.png", tmp_path / "out" / "m.geojson")
        np.testing.assert_array_equal(load_mask(tmp_path / "out" / "m.png", s, max_size=384).mask, tg.mask)
        np.testing.assert_array_equal(load_mask(tmp_path / "out" / "m.geojson", s, max_size=384).mask, tg.mask)
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.geojson", "m.png"]
        # errors name the file
        with pytest.raises(DataError, match=r"nothere\.png: tissue mask not found"):
            tissue_mask_for(s, TissueConfig(mask=str(tmp_path / "nothere.png")))
        Image.fromarray(np.zeros((96, 64), np.uint8)).save(tmp_path / "tall.png")
        with pytest.raises(DataError, match=r"tall\.png: .*aspect ratios differ"):
            load_mask(tmp_path / "tall.png", s)
        (tmp_path / "points.geojson").write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
        with pytest.raises(DataError, match=r"points\.geojson: GeoJSON has no Polygon"):
            load_mask(tmp_path / "points.geojson", s)
        (tmp_path / "bad.geojson").write_text("{not json")
        with pytest.raises(DataError, match=r"bad\.geojson: not valid GeoJSON"):
            load_mask(tmp_path / "bad.geojson", s)
