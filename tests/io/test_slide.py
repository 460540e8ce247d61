"""Slide reading on real files: pyramidal TIFFs through OpenSlide and tiffslide, plain images, bad files."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage import data as skdata
from support.slides import pyramid_levels, read_corner, read_corner_into, tissue_phantom, write_pyramid

from medattn.errors import DataError
from medattn.io.slide import find_slides, open_slide

BACKENDS = ["openslide", "tiffslide"]


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return tissue_phantom(640, 1000, seed=3)


@pytest.fixture(scope="module")
def slides(tmp_path_factory, phantom) -> dict:
    root = tmp_path_factory.mktemp("slides")
    return {
        "aperio": write_pyramid(root / "aperio.svs", phantom, mpp=0.25, magnification=40),
        "generic": write_pyramid(root / "generic.tif", phantom, mpp=0.5),
        "bare": write_pyramid(root / "bare.tif", phantom),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["aperio", "generic"])
def test_pyramid_levels_resolution_and_pixels(slides, phantom, backend, kind):
    with open_slide(slides[kind], backend=backend) as s:
        assert s.backend == backend
        assert s.slide_id == kind
        assert s.dimensions == (1000, 640)
        assert s.level_count == 4
        assert s.level_dimensions == [(1000, 640), (500, 320), (250, 160), (125, 80)]
        assert s.level_downsamples == pytest.approx([1, 2, 4, 8])
        if kind == "aperio":
            assert (s.mpp, s.magnification) == (pytest.approx(0.25), pytest.approx(40))
        else:  # no objective power in a generic TIFF: derived as 10 / mpp
            assert (s.mpp, s.magnification) == (pytest.approx(0.5), pytest.approx(20))
        levels = pyramid_levels(phantom, 64)  # as written by write_pyramid
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (1000, 640)), phantom)
        np.testing.assert_array_equal(s.read_region((200, 100), 1, (300, 200)), levels[1][50:250, 100:400])
        np.testing.assert_array_equal(s.read_region((0, 0), 3, (125, 80)), levels[3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_immunohistochemistry_image_round_trips(tmp_path, backend):
    ihc = skdata.immunohistochemistry()  # a real 512 x 512 IHC micrograph
    path = write_pyramid(tmp_path / "ihc.tif", ihc, mpp=0.5, compression="zlib", min_size=128)
    with open_slide(path, backend=backend) as s:
        assert s.level_count == 3
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (512, 512)), ihc)
        level1 = s.read_region((0, 0), 1, (256, 256)).astype(np.int16)
    block_mean = ihc.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))  # independent 2 x 2 downsampling
    assert np.abs(level1 - block_mean).max() <= 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_marker_position_round_trips_across_levels(tmp_path, backend):
    img = np.full((768, 1024, 3), 255, np.uint8)
    x0, y0 = 613, 389  # level-0 top-left of a 16 x 16 red marker: centre (621, 397)
    img[y0: y0 + 16, x0: x0 + 16] = (255, 0, 0)
    with open_slide(write_pyramid(tmp_path / "marker.tif", img, mpp=0.5), backend=backend) as s:
        for level in range(s.level_count):
            ds = s.level_downsamples[level]
            full = s.read_region((0, 0), level, s.level_dimensions[level]).astype(float)
            redness = np.clip(full[..., 0] - full[..., 1], 0, None)
            rows, cols = np.indices(redness.shape)
            # redness-weighted centre in level pixels → level 0 (pixel i covers [i * ds, (i + 1) * ds))
            cx = ((cols * redness).sum() / redness.sum() + 0.5) * ds
            cy = ((rows * redness).sum() / redness.sum() + 0.5) * ds
            assert abs(cx - (x0 + 8)) <= ds / 2 and abs(cy - (y0 + 8)) <= ds / 2, (level, cx, cy)
            # and back: the level-0 pixels around the mapped centre are the marker's
            centre = s.read_region((round(cx) - 2, round(cy) - 2), 0, (4, 4))
            assert (centre == (255, 0, 0)).all()
            # the level pixel read at a level-0 location is the one containing it
            px = s.read_region((x0 + 8, y0 + 8), level, (1, 1))[0, 0]
            np.testing.assert_array_equal(px, full[int((y0 + 8) // ds), int((x0 + 8) // ds)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_outside_the_slide_reads_white(slides, phantom, backend):
    with open_slide(slides["generic"], backend=backend) as s:
        region = s.read_region((-50, -30), 0, (100, 80))
        assert (region[:30] == 255).all() and (region[:, :50] == 255).all()
        np.testing.assert_array_equal(region[30:, 50:], phantom[:50, :50])
        assert (s.read_region((5000, 5000), 2, (16, 16)) == 255).all()
        edge = s.read_region((960, 600), 1, (40, 40))  # level 1 is 500 x 320: 20 x 20 inside
        assert (edge[20:] == 255).all() and (edge[:, 20:] == 255).all() and (edge[:20, :20] < 255).any()


def test_thumbnail_size_and_downsample(slides, phantom):
    with open_slide(slides["generic"]) as s:
        thumb, (sx, sy) = s.get_thumbnail(200)
        assert thumb.shape == (128, 200, 3) and thumb.dtype == np.uint8
        assert (sx, sy) == (pytest.approx(5.0), pytest.approx(5.0))
        expected = phantom.reshape(128, 5, 200, 5, 3).mean(axis=(1, 3))
        assert np.abs(thumb.astype(float) - expected).mean() < 2.0
        small, ds = s.get_thumbnail(4000)  # never larger than level 0
        assert small.shape == (640, 1000, 3) and ds == (1.0, 1.0)
        assert s.best_level_for_downsample(3.9) == 1 and s.best_level_for_downsample(4) == 2
        assert s.best_level_for_downsample(0.5) == 0 and s.best_level_for_downsample(100) == 3


def test_png_is_a_single_level_slide_and_transparency_is_white(tmp_path, phantom):
    rgba = np.dstack([phantom, np.full(phantom.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "plain.png")
    with pytest.raises(DataError, match=r"plain\.png: no microns-per-pixel or magnification.*slide\.mpp"):
        open_slide(tmp_path / "plain.png")
    with open_slide(tmp_path / "plain.png", magnification=20) as s:
        assert (s.backend, s.level_count, s.dimensions) == ("image", 1, (1000, 640))
        assert (s.mpp, s.magnification) == (pytest.approx(0.5), pytest.approx(20))
        region = s.read_region((0, 0), 0, (20, 20))
        assert (region[:10, :10] == 255).all()
        np.testing.assert_array_equal(region[10:, 10:], phantom[10:20, 10:20])


def test_stripped_tiff_opens_as_image_with_resolution_tags(tmp_path, phantom):
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(path, phantom, photometric="rgb", resolution=(1e4 / 0.8, 1e4 / 0.8), resolutionunit="CENTIMETER")
    with open_slide(path) as s:
        assert s.backend == "image" and s.level_count == 1
        assert s.mpp == pytest.approx(0.8) and s.magnification == pytest.approx(12.5)
        np.testing.assert_array_equal(s.read_region((100, 50), 0, (30, 20)), phantom[50:70, 100:130])


def test_overrides_apply_only_where_metadata_lacks_the_value(slides):
    with pytest.raises(DataError, match=r"bare\.tif: no microns-per-pixel"):
        open_slide(slides["bare"])
    with open_slide(slides["bare"], mpp=0.25) as s:
        assert (s.mpp, s.magnification) == (pytest.approx(0.25), pytest.approx(40))
    with open_slide(slides["bare"], magnification=10) as s:
        assert (s.mpp, s.magnification) == (pytest.approx(1.0), pytest.approx(10))
    with open_slide(slides["generic"], mpp=0.1, magnification=40) as s:  # metadata mpp wins
        assert (s.mpp, s.magnification) == (pytest.approx(0.5), pytest.approx(40))
    with open_slide(slides["aperio"], mpp=0.1, magnification=10) as s:
        assert (s.mpp, s.magnification) == (pytest.approx(0.25), pytest.approx(40))


def test_bad_files_raise_one_data_error_naming_the_file(tmp_path, slides):
    fake = tmp_path / "fake.svs"
    fake.write_text("this is not a slide\n")
    with pytest.raises(DataError, match=r"fake\.svs: not a readable slide"):
        open_slide(fake)
    raw = slides["generic"].read_bytes()
    for fraction in (0.5, 0.95):
        truncated = tmp_path / f"truncated_{fraction}.tif"
        truncated.write_bytes(raw[: int(len(raw) * fraction)])
        with pytest.raises(DataError, match=rf"truncated_{fraction}\.tif: .*truncated"):
            open_slide(truncated)
    png = tmp_path / "cut.png"
    Image.fromarray(tissue_phantom(64, 64)).save(png)
    png.write_bytes(png.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.png: not a readable image"):
        open_slide(png, mpp=0.5)
    with pytest.raises(DataError, match=r"missing\.svs: slide file not found"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(DataError, match="level 7 does not exist"):
        open_slide(slides["generic"]).read_region((0, 0), 7, (4, 4))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_slide_is_usable_in_worker_processes(slides, method):
    ctx = multiprocessing.get_context(method)
    with open_slide(slides["aperio"]) as s:
        expected = read_corner(s)  # the parent's handle is open and used before the workers start
        clone = pickle.loads(pickle.dumps(s))
        assert (clone.backend, clone.mpp, read_corner(clone)) == ("openslide", s.mpp, expected)
        if method == "fork":  # the child inherits the open Slide and reopens its own handle
            queue = ctx.Queue()
            procs = [ctx.Process(target=read_corner_into, args=(s, queue)) for _ in range(2)]
            for p in procs:
                p.start()
            results = [queue.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(timeout=60)
                assert p.exitcode == 0
        else:  # spawn: the Slide travels pickled (by path) and reopens in the worker
            with ctx.Pool(2) as pool:
                results = pool.map(read_corner, [s, s, s])
        assert read_corner(s) == expected  # the parent's handle still works
    assert results == [expected] * len(results)


def test_find_slides(tmp_path, slides):
    for name in ("b.svs", "a.TIF", "c.png", "notes.txt", ".tmp.svs"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.tif").mkdir()
    found = find_slides([tmp_path, slides["generic"], tmp_path / "b.svs"])
    assert [p.name for p in found] == ["a.TIF", "b.svs", "c.png", "generic.tif"]
    with pytest.raises(DataError, match=r"notes\.txt: not a slide file"):
        find_slides([tmp_path / "notes.txt"])
    with pytest.raises(DataError, match=r"nowhere: no such file"):
        find_slides([tmp_path / "nowhere"])
