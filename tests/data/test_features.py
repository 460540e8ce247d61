"""Feature extraction end to end on generated pyramidal TIFF slides: CLI, failures, resuming."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.processes import wait_for

from medattn.cli import main
from medattn.config import load_mil_config
from medattn.data.bags import read_bag
from medattn.data.features import bag_is_current, extract_features
from medattn.data.handcrafted import HandcraftedEncoder
from medattn.data.patching import PatchGrid, read_patch
from medattn.data.wsi_synth import write_synthetic_slides
from medattn.io.slide import open_slide


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """Two 2048 × 1536 synthetic slides (20×, 0.5 µm/px) and a truncated copy of one."""
    root = tmp_path_factory.mktemp("wsi")
    write_synthetic_slides(root / "synth", n_slides=2, size=(2048, 1536), seed=3)
    folder = root / "slides"
    shutil.copytree(root / "synth" / "slides", folder)
    data = (folder / "slide_001.tif").read_bytes()
    (folder / "broken.tif").write_bytes(data[: len(data) // 3])
    return folder


SMALL = ("--set", "tissue.thumbnail_size=512")  # detection on a 512 px thumbnail: quick


def _cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medattn", "features", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)


def _cfg(*overrides: str):
    return load_mil_config(None, ["encoder.num_workers=0", "encoder.batch_size=32", "tissue.thumbnail_size=512",
                                  *overrides])


def test_cli_extracts_bags_reports_the_truncated_slide_and_resumes(slides, tmp_path):
    out = tmp_path / "bags"
    r = _cli(slides, "-o", out, "--set", "encoder.num_workers=1", "--set", "encoder.batch_size=16", *SMALL)
    assert r.returncode == 2, r.stderr
    assert f"2 extracted, 0 skipped (already done), 1 failed → {out}" in r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("medattn: error:")]
    assert len(errors) == 1 and f"{slides / 'broken.tif'}: " in errors[0] and "truncated" in errors[0]
    assert sorted(p.name for p in out.glob("[!.]*.h5")) == ["slide_000.h5", "slide_001.h5"]
    for sid in ("slide_000", "slide_001"):
        assert (out / "masks" / f"{sid}.png").is_file() and (out / "masks" / f"{sid}.geojson").is_file()
        assert (out / "thumbnails" / f"{sid}.png").is_file()
    bag = read_bag(out / "slide_000.h5")
    a = bag.attrs
    assert bag.features.shape[1] == 70 and len(bag) >= 10
    assert (a["encoder"], a["patch_size"], a["level"], a["magnification"], a["mpp"]) == (
        "handcrafted", 256, 0, 20.0, 0.5)
    assert a["slide_id"] == "slide_000" and a["patch_size_level0"] == 256 and a["tissue_source"] == "detected"
    assert (bag.coords % 256 == 0).all() and (bag.coords[:, 0] <= 2048 - 256).all()
    # a bag row is the encoder applied to that patch as read from the slide
    grid = PatchGrid(coords=bag.coords, level=0, read_size=256, patch_size=256, patch_size_level0=256,
                     magnification=20.0, mpp=0.5, tissue_fraction=np.ones(len(bag), np.float32))
    with open_slide(slides / "slide_000.tif") as slide:
        patches = np.stack([read_patch(slide, grid, i) for i in (0, len(bag) - 1)])
    direct = HandcraftedEncoder()(torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(bag.features[[0, -1]], direct, rtol=1e-5, atol=1e-6)
    mask = np.asarray(Image.open(out / "masks" / "slide_000.png"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255} and 0 < (mask > 0).mean() < 1

    # an interrupted run: slide_001's bag never got renamed into place, only its temporary file is left
    (out / "slide_001.h5").unlink()
    (out / ".slide_001.abc123.tmp.h5").write_bytes(b"half a bag")
    before = (out / "slide_000.h5").stat().st_mtime_ns
    (slides.parent / "good").mkdir()
    for name in ("slide_000.tif", "slide_001.tif"):
        os.link(slides / name, slides.parent / "good" / name)
    r = _cli(slides.parent / "good", "-o", out, *SMALL)
    assert r.returncode == 0, r.stderr
    assert f"1 extracted, 1 skipped (already done), 0 failed → {out}" in r.stdout
    assert (out / "slide_000.h5").stat().st_mtime_ns == before
    assert len(read_bag(out / "slide_001.h5")) >= 10
    assert sorted(p.name for p in out.glob("*.h5")) == ["slide_000.h5", "slide_001.h5"]  # temp file cleaned


def test_kill_9_mid_run_leaves_only_complete_bags_and_the_rerun_finishes(slides, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for name in ("slide_000.tif", "slide_001.tif"):
        os.link(slides / name, good / name)
    out = tmp_path / "bags"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medattn", "features", str(good), "-o", str(out), "--no-progress",
                             *SMALL, "--set", "encoder.batch_size=1", "--set", "encoder.num_workers=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: (out / "slide_000.h5").exists() or proc.poll() is not None, 120, "the first bag")
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
    for bag in out.glob("[!.]*.h5"):  # whatever is there under a bag's name is a complete bag
        assert len(read_bag(bag)) >= 10
    r = _cli(good, "-o", out, *SMALL)
    assert r.returncode == 0, r.stderr
    extracted, skipped = (int(r.stdout.split(" extracted")[0]), int(r.stdout.split(", ")[1].split(" skipped")[0]))
    assert skipped >= 1 and extracted + skipped == 2  # slide_000 was done before the kill
    assert sorted(p.name for p in out.glob("*.h5")) == ["slide_000.h5", "slide_001.h5"]


def test_resume_rules_settings_encoder_and_overwrite(slides, tmp_path):
    out = tmp_path / "bags"
    good = [slides / "slide_000.tif", slides / "slide_001.tif"]
    first = extract_features(good, out, _cfg(), progress=False)
    assert [p.name for p in first.done] == ["slide_000.h5", "slide_001.h5"] and not first.failed
    ref = read_bag(out / "slide_000.h5")
    assert extract_features(good, out, _cfg(), progress=False).skipped == first.done
    # DataLoader workers give exactly what the main process computes
    again = extract_features(good[:1], out, _cfg("encoder.num_workers=2"), overwrite=True, progress=False)
    assert again.done == first.done[:1]
    np.testing.assert_array_equal(read_bag(out / "slide_000.h5").features, ref.features)
    # other patch settings → recomputed, with fewer patches when more tissue is required
    strict = _cfg("patch.min_tissue=0.95")
    assert not bag_is_current(out / "slide_000.h5", strict, HandcraftedEncoder())
    redo = extract_features(good[:1], out, strict, progress=False)
    assert redo.done == first.done[:1] and len(read_bag(out / "slide_000.h5")) < len(ref)
    # another encoder → recomputed
    weights = tmp_path / "resnet10.pt"
    from monai.networks.nets import ResNet

    net = ResNet("basic", [1, 1, 1, 1], [64, 128, 256, 512], spatial_dims=2, n_input_channels=3, conv1_t_size=7,
                 conv1_t_stride=2, feed_forward=False, bias_downsample=False)
    torch.save(net.state_dict(), weights)
    cnn = _cfg("patch.min_tissue=0.95", "encoder.name=cnn", f"encoder.weights={weights}",
               "encoder.kwargs={network: resnet10, input_size: 32}")
    res = extract_features(good[:1], out, cnn, progress=False)
    bag = read_bag(out / "slide_000.h5")
    assert res.done == first.done[:1] and bag.features.shape[1] == 512
    assert bag.attrs["encoder"] == "cnn" and bag.attrs["encoder_version"].startswith("resnet10-")


def test_failures_are_one_line_and_do_not_stop_the_batch(slides, tmp_path):
    blank = tmp_path / "in" / "blank.png"  # glass only: no tissue
    blank.parent.mkdir()
    Image.fromarray(np.full((600, 800, 3), 245, np.uint8)).save(blank)
    res = extract_features([blank, slides / "broken.tif", slides / "slide_000.tif"], tmp_path / "out",
                           _cfg(), progress=False)
    assert [p.name for p in res.done] == ["slide_000.h5"]
    failed = dict(res.failed)
    assert set(failed) == {str(blank), str(slides / "broken.tif")}
    assert "no microns-per-pixel or magnification" in failed[str(blank)]
    assert all("\n" not in m and not m.startswith(str(p)) for p, m in res.failed)
    res = extract_features([blank], tmp_path / "out", _cfg("slide.mpp=0.5"), progress=False)
    assert "no tissue patches" in dict(res.failed)[str(blank)] and not (tmp_path / "out" / "blank.h5").exists()
    assert (tmp_path / "out" / "masks" / "blank.png").is_file()  # the empty mask is there to look at
    twin = tmp_path / "twin"
    twin.mkdir()
    os.link(slides / "slide_000.tif", twin / "slide_000.tif")
    res = extract_features([slides / "slide_000.tif", twin / "slide_000.tif"], tmp_path / "out2", _cfg(),
                           progress=False)
    assert len(res.done) == 1 and "also the id of" in res.failed[0][1]


def test_cli_bad_config_and_missing_input_exit_2(tmp_path, capsys):
    assert main(["features", str(tmp_path / "nothing_here"), "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"medattn: error: {tmp_path / 'nothing_here'}: no such file or folder"
    assert main(["features", str(tmp_path), "-o", str(tmp_path / "o"), "--set", "encoder.name=cnn"]) == 2
    assert "encoder.weights: the cnn encoder needs a local weights file" in capsys.readouterr().err
    assert main(["features", str(tmp_path), "-o", str(tmp_path / "o"), "--mpp", "0"]) == 2
    assert "--mpp must be > 0" in capsys.readouterr().err
