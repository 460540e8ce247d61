"""Synthetic whole slides: real pyramidal TIFFs, tumour ground truth inside tissue and image, patients,
survival columns, determinism, folder safety and the ``medattn synth --kind wsi`` command."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from medattn.data.slide_table import read_slide_table
from medattn.data.wsi_synth import ANNOTATION_DOWNSAMPLE, read_annotation, render_slide, write_synthetic_slides
from medattn.errors import ConfigError, DataError

SIZE = (1536, 1152)


def blocks(image: np.ndarray, step: int) -> np.ndarray:
    """``[H, W, 3]`` → ``[H/step, W/step]`` mean brightness of each step × step block."""
    h, w = image.shape[0] // step * step, image.shape[1] // step * step
    return image[:h, :w].astype(float).mean(axis=2).reshape(h // step, step, w // step, step).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def wsi(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wsi") / "synth"
    write_synthetic_slides(out, n_slides=4, n_patients=2, size=SIZE, seed=3)
    return out


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "slides.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_slide_table_has_patients_labels_and_survival(wsi):
    table = rows(wsi)
    assert list(table[0]) == ["slide_id", "patient_id", "label", "time", "event", "slide"]
    assert [r["slide_id"] for r in table] == ["slide_000", "slide_001", "slide_002", "slide_003"]
    assert [r["patient_id"] for r in table] == ["patient_000", "patient_001", "patient_000", "patient_001"]
    by_patient = {}
    for r in table:  # one label, time and event per patient
        by_patient.setdefault(r["patient_id"], set()).add((r["label"], r["time"], r["event"]))
    assert all(len(v) == 1 for v in by_patient.values())
    assert sorted(r["label"] for r in table) == ["normal", "normal", "tumour", "tumour"]
    assert all(float(r["time"]) > 0 and r["event"] in ("0", "1") for r in table)
    parsed = read_slide_table(wsi / "slides.csv")  # the MIL slide table reader accepts it
    assert parsed.classes == ["normal", "tumour"]
    assert [rec.slide_path for rec in parsed.records] == [wsi / "slides" / f"{s}.tif" for s in parsed.slide_ids]
    assert json.loads((wsi / "synth.json").read_text())["generator"] == "medattn.data.wsi_synth"


def test_slides_are_pyramidal_tiffs_with_mpp_and_magnification(wsi):
    with openslide.OpenSlide(str(wsi / "slides" / "slide_000.tif")) as slide:
        assert slide.dimensions == SIZE
        assert slide.level_dimensions == ((1536, 1152), (768, 576))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER]) == 20.0


def test_tumour_annotations_lie_inside_tissue_and_image(wsi):
    for r in rows(wsi):
        sid = r["slide_id"]
        geo = json.loads((wsi / "annotations" / f"{sid}.geojson").read_text())
        polygons = read_annotation(wsi / "annotations" / f"{sid}.geojson")
        truth = np.asarray(Image.open(wsi / "annotations" / f"{sid}.png")) > 0
        tissue = np.asarray(Image.open(wsi / "tissue" / f"{sid}.png")) > 0
        assert truth.shape == tissue.shape == (SIZE[1] // ANNOTATION_DOWNSAMPLE, SIZE[0] // ANNOTATION_DOWNSAMPLE)
        if r["label"] == "normal":
            assert geo == {"type": "FeatureCollection", "features": []} and not truth.any()
            continue
        assert 1 <= len(polygons) <= 3
        for feature, poly in zip(geo["features"], polygons, strict=True):
            ring = feature["geometry"]["coordinates"][0]
            assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]  # closed ring
            assert feature["properties"]["objectType"] == "annotation"
            assert feature["properties"]["classification"]["name"] == "Tumor"
            assert poly.min() >= 0 and (poly.max(axis=0) < SIZE).all()
        assert 0.01 < truth.mean() < 0.6
        assert not (truth & ~tissue).any()
        with openslide.OpenSlide(str(wsi / "slides" / f"{sid}.tif")) as slide:
            image = np.asarray(slide.read_region((0, 0), 0, SIZE).convert("RGB"))
        brightness = blocks(image, ANNOTATION_DOWNSAMPLE)
        assert np.mean(brightness[truth] < 235) > 0.99  # stained tissue (not glass) under the annotation
        assert np.mean(brightness[~tissue] > 235) > 0.95  # glass outside the tissue


def test_tumour_patches_are_darker_than_normal_tissue_patches(wsi):
    step = 128 // ANNOTATION_DOWNSAMPLE  # 128-px patches on the mask grid
    tumour_means, normal_means = [], []
    for r in rows(wsi):
        sid = r["slide_id"]
        truth = np.asarray(Image.open(wsi / "annotations" / f"{sid}.png")) > 0
        tissue = np.asarray(Image.open(wsi / "tissue" / f"{sid}.png")) > 0
        with openslide.OpenSlide(str(wsi / "slides" / f"{sid}.tif")) as slide:
            image = np.asarray(slide.read_region((0, 0), 0, SIZE).convert("RGB"))
        patch_mean = blocks(image, 128)
        for (i, j), value in np.ndenumerate(patch_mean):
            t = truth[i * step:(i + 1) * step, j * step:(j + 1) * step]
            s = tissue[i * step:(i + 1) * step, j * step:(j + 1) * step]
            if t.all():
                tumour_means.append(value)
            elif s.all() and not t.any():
                normal_means.append(value)
    assert len(tumour_means) >= 5 and len(normal_means) >= 20
    assert max(tumour_means) < min(normal_means)  # a mean-colour feature separates them perfectly
    assert np.mean(normal_means) - np.mean(tumour_means) > 20


def test_rendering_is_deterministic_by_seed():
    a = render_slide(np.random.default_rng([5, 0]), (768, 512), 0.5, tumour=True)
    b = render_slide(np.random.default_rng([5, 0]), (768, 512), 0.5, tumour=True)
    c = render_slide(np.random.default_rng([6, 0]), (768, 512), 0.5, tumour=True)
    assert a.image.shape == (512, 768, 3) and a.image.dtype == np.uint8
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.tumour, b.tumour)
    assert not np.array_equal(a.image, c.image)
    assert not render_slide(np.random.default_rng(1), (768, 512), 0.5, tumour=False).tumour.any()


def test_same_arguments_write_identical_files(tmp_path):
    first = write_synthetic_slides(tmp_path / "a", n_slides=2, size=(768, 512), seed=11).parent
    second = write_synthetic_slides(tmp_path / "b", n_slides=2, size=(768, 512), seed=11).parent
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 2 * 4 + 2  # per slide: tif, geojson, 2 png; plus slides.csv, synth.json
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_output_folder_is_replaced_whole_but_never_a_users_folder(tmp_path):
    out = tmp_path / "synth"
    write_synthetic_slides(out, n_slides=3, size=(512, 512), seed=0)
    write_synthetic_slides(out, n_slides=1, size=(512, 512), seed=0)
    assert sorted(p.name for p in (out / "slides").iterdir()) == ["slide_000.tif"]  # no stale slides
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temporary folders left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="mine: folder is not empty and was not written by a medattn"):
        write_synthetic_slides(mine, n_slides=1, size=(512, 512))
    assert (mine / "notes.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="n_patients must be in"):
        write_synthetic_slides(tmp_path / "x", n_slides=2, n_patients=3)


def test_cli_synth_kind_wsi(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "medattn", "synth", str(out), "--kind", "wsi", "--n-slides", "2",
                           "--size", "768", "512", "--mpp", "0.25", "--magnification", "40", "--seed", "4"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out / 'slides.csv'}"
    with openslide.OpenSlide(str(out / "slides" / "slide_001.tif")) as slide:
        assert slide.dimensions == (768, 512)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert float(slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER]) == 40.0
    bad = subprocess.run([sys.executable, "-m", "medattn", "synth", str(tmp_path / "bad"), "--kind", "wsi",
                          "--size", "100", "100"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "medattn: error: size must be (width, height) with both >= 256, got (100, 100)"
