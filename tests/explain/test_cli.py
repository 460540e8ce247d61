"""``medattn explain`` / ``medattn report`` end to end in subprocesses (MIL slide, MIL bag, segmentation)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.explain_fixtures import handcrafted_dim, mil_checkpoint, planted_folder, positive_bag
from support.html_checks import assert_figure_not_blank, parse_report

from medattn.cli import main
from medattn.data.wsi_synth import write_synthetic_slides
from medattn.engine.trainer import train
from medattn.io import read_image

CHROMIUM = Path("/usr/bin/chromium")


def medattn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medattn", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def slide_run(tmp_path_factory) -> Path:
    """``medattn explain`` of a synthetic tumour slide (bag extracted on the fly) with its tumour region."""
    root = tmp_path_factory.mktemp("explain_slide")
    write_synthetic_slides(root / "wsi", n_slides=1, size=(2048, 1536), positive_fraction=1.0, seed=0)
    ckpt = mil_checkpoint(root / "mil.pt", handcrafted_dim())
    out = root / "out"
    r = medattn("explain", str(ckpt), str(root / "wsi" / "slides" / "slide_000.tif"), "-o", str(out),
                "--region", str(root / "wsi" / "annotations" / "slide_000.geojson"), "--seeds", "0,1",
                "--percents", "5,10,25", "--top-k", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"report: {out / 'report.html'}"
    return out


def test_slide_explanation_report(slide_run: Path) -> None:
    out = slide_run
    parsed = parse_report(out / "report.html")
    for fig in ("fig-thumbnail", "fig-attention", "fig-curves", "fig-scatter", "fig-effects"):
        assert_figure_not_blank(parsed, fig)
    meta = json.loads((out / "explain.json").read_text())
    assert meta["input_type"] == "slide" and meta["command"].startswith("medattn explain ")
    assert "--region" in meta["command"] and meta["versions"]["torch"]
    n = meta["n_patches"]
    assert n == len((out / "attention.csv").read_text().splitlines()) - 1 > 10
    experiments = {row[0] for row in parsed.tables["experiments"][1:]}
    assert experiments == {"single_removal", "single_patch", "ranked_removal", "random_removal", "greedy_necessity",
                           "greedy_sufficiency", "region_remove", "region_keep"}
    for table in ("necessary", "sufficient"):
        assert len(parsed.tables[table]) == 4 and parsed.images_in_tables[table] == 3  # a crop per row
    crops = sorted(out.glob("crops/*.png"))
    assert 3 <= len(crops) <= 6 and all(np.asarray(Image.open(c)).shape == (128, 128, 3) for c in crops)
    assert dict(parsed.tables["outputs"][1:]).keys() == {"p_normal", "p_tumour"}
    assert (out / "bag" / "slide_000.h5").is_file() and (out / "heatmap.png").is_file()


def test_report_rebuilds_from_files_only(slide_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(slide_run, copy)
    (copy / "report.html").unlink()
    shutil.rmtree(copy / "bag")  # the report needs no bag, slide or model
    (tmp_path / "summary.json").write_text(json.dumps({"auc": {"mean": 0.75, "std": 0.1}}))
    r = medattn("report", str(copy), "--metrics", str(tmp_path / "summary.json"))
    assert r.returncode == 0, r.stderr
    before, after = parse_report(slide_run / "report.html"), parse_report(copy / "report.html")
    assert sorted(after.figures) == sorted(before.figures)
    assert after.tables["necessary"] == before.tables["necessary"]
    assert dict(after.tables["metrics"]) == {"auc": "0.75 ± 0.1"}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not installed")
def test_report_renders_in_headless_chromium(slide_run: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    r = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
                        (slide_run / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (2000, 1200, 3)
    assert pixels.reshape(-1, 3).std(0).max() > 20  # not a blank page
    pinkish = (pixels[..., 0] > 150) & (pixels[..., 1] < 140) & (pixels[..., 2] > 150)
    assert pinkish.sum() > 1000  # the H&E-like thumbnail was rendered from its data: URI


def test_bag_explanation_with_transplant(tmp_path: Path) -> None:
    bags, folder = planted_folder(tmp_path / "planted")
    ckpt = mil_checkpoint(tmp_path / "mil.pt", 16, bags, steps=60)
    negative = bags.slide_ids[int(np.flatnonzero(bags.labels == 0)[0])]
    donor = folder / f"{bags.slide_ids[positive_bag(bags)]}.h5"
    out = tmp_path / "out"
    r = medattn("explain", str(ckpt), str(folder / f"{negative}.h5"), "-o", str(out), "--transplant", str(donor),
                "--experiments", "single_removal,transplant", "--target", "p_tumour", "--engine", "exact")
    assert r.returncode == 0, r.stderr
    parsed = parse_report(out / "report.html")
    rows = {row[0]: row for row in parsed.tables["experiments"][1:]}
    assert set(rows) == {"single_removal", "transplant"}
    assert rows["transplant"][5] != ""  # the negative bag flips to tumour once planted patches are added
    summary = json.loads((out / "counterfactuals" / "summary.json").read_text())
    assert summary["engine"] == "exact" and summary["target"] == "p_tumour"


def test_segmentation_explanation(synth3d: Path, tiny, tmp_path: Path) -> None:
    ckpt = train(tiny(synth3d, tmp_path / "run", "train.epochs=1"), progress=False).best_checkpoint
    image = sorted((synth3d.parent / "imagesTs").iterdir())[0]
    out = tmp_path / "seg"
    r = medattn("explain", str(ckpt), str(image), "-o", str(out), "--occlusion-size", "8")
    assert r.returncode == 0, r.stderr
    parsed = parse_report(out / "report.html")
    for fig in ("fig-input", "fig-gates", "fig-occlusion"):
        assert_figure_not_blank(parsed, fig)
    meta = json.loads((out / "explain.json").read_text())
    labels = meta["labels"]
    assert len(parsed.tables["prediction"]) == len(labels) + 1
    assert [r[0] for r in parsed.tables["gate-stats"][1:]] == ["0"]
    pred, ref = read_image(out / "prediction.nii.gz"), read_image(image)
    assert pred.spatial_shape == ref.spatial_shape
    assert set(np.unique(pred.array)) <= {int(k) for k in labels}


def test_user_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"medattn: error: {tmp_path / 'explain.json'}: missing (not an " \
                                              "explanation folder?)"
    assert main(["explain", str(tmp_path / "nope.pt"), "x.h5", "-o", str(tmp_path / "o")]) == 2
    assert "nope.pt: no such checkpoint file" in capsys.readouterr().err
    bags, folder = planted_folder(tmp_path / "planted", n_bags=2)
    ckpt = mil_checkpoint(tmp_path / "mil.pt", 16)
    bag = str(folder / f"{bags.slide_ids[0]}.h5")
    assert main(["explain", str(ckpt), bag, "-o", str(tmp_path / "o"), "--experiments", "bogus"]) == 2
    assert "unknown counterfactual experiment 'bogus'" in capsys.readouterr().err
    assert main(["explain", str(ckpt), bag, bag, "-o", str(tmp_path / "o")]) == 2
    assert "takes one slide or bag, got 2 inputs" in capsys.readouterr().err
