"""The command line as a user runs it: real subprocesses, one-line errors, --debug tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medattn.io import Geometry, read_image, write_image


def medattn(*args: str | Path, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "medattn", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("medattn: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def tiny_sets(dataset: Path, run: Path) -> list[str]:
    sets = [f"data.dataset={dataset}", f"output_dir={run}", "data.num_workers=0", "model.kwargs.channels=[4,8]",
            "train.patch_size=[16,16,8]", "train.epochs=1", "preprocess.target_spacing=[1.6,1.6,4.0]"]
    return [x for s in sets for x in ("--set", s)]


def test_unknown_config_key_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 3\n")
    line = one_error_line(medattn("train", cfg))
    assert line == f"medattn: error: {cfg}: train.epoch: unknown key (did you mean 'epochs'?)"


def test_debug_shows_the_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 3\n")
    proc = medattn("train", cfg, "--debug")
    assert proc.returncode != 0 and "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError" in proc.stderr


def test_missing_dataset_file(tmp_path):
    line = one_error_line(medattn("train", "demo_3d", "--set", f"data.dataset={tmp_path}/nope.json"))
    assert f"{tmp_path}/nope.json: no such dataset description" in line


def test_empty_dataset(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}, "training": []}))
    line = one_error_line(medattn("train", "demo_3d", "--set", f"data.dataset={tmp_path / 'dataset.json'}"))
    assert "empty dataset" in line


def test_corrupt_image_in_dataset_names_the_file(synth3d, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth3d.parent, data)
    victim = sorted((data / "imagesTr").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated .nii.gz
    line = one_error_line(medattn("train", "demo_3d", *tiny_sets(data / "dataset.json", tmp_path / "run")))
    assert str(victim) in line and "cannot read" in line


def test_label_outside_declared_classes(synth3d, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth3d.parent, data)
    label = sorted((data / "labelsTr").iterdir())[0]
    lab = read_image(label)
    arr = lab.array[0].copy()
    arr[0, 0, 0] = 9
    write_image(arr, label, lab.geometry, reference=lab)
    line = one_error_line(medattn("train", "demo_3d", *tiny_sets(data / "dataset.json", tmp_path / "run")))
    assert str(label) in line and "[9] outside the declared classes [0, 1, 2]" in line


def test_image_label_grid_mismatch(synth3d, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth3d.parent, data)
    label = sorted((data / "labelsTr").iterdir())[0]
    lab = read_image(label)
    write_image(lab.array[0][:-1], label, lab.geometry)
    line = one_error_line(medattn("train", "demo_3d", *tiny_sets(data / "dataset.json", tmp_path / "run")))
    assert str(label) in line and "label grid does not match image" in line


def test_missing_checkpoint(tmp_path):
    line = one_error_line(medattn("infer", tmp_path / "none.pt", tmp_path, "-o", tmp_path / "out"))
    assert line == f"medattn: error: {tmp_path / 'none.pt'}: no such checkpoint file"


def test_evaluate_grid_mismatch(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    write_image(np.zeros((4, 4, 4), np.uint8), tmp_path / "p" / "a.nii.gz", Geometry.identity(3))
    write_image(np.zeros((4, 4, 5), np.uint8), tmp_path / "r" / "a.nii.gz", Geometry.identity(3))
    line = one_error_line(medattn("evaluate", tmp_path / "p", tmp_path / "r"))
    assert "a.nii.gz" in line


def test_synth_train_infer_evaluate_pipeline(tmp_path):
    """The four commands chained as a user would, checking outputs and geometry on disk."""
    assert medattn("synth", tmp_path / "data", "--n-train", "3", "--n-test", "2", "--seed", "4").returncode == 0
    ds = tmp_path / "data" / "dataset.json"
    proc = medattn("train", "demo_3d", *tiny_sets(ds, tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    assert ckpt.is_file() and "best checkpoint" in proc.stdout
    proc = medattn("infer", ckpt, tmp_path / "data" / "imagesTs", "-o", tmp_path / "pred", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "2 predicted, 0 skipped" in proc.stdout
    for src in sorted((tmp_path / "data" / "imagesTs").iterdir()):
        name = src.name.replace("_0000", "")
        out, inp = nib.load(tmp_path / "pred" / name), nib.load(src)
        assert out.shape == inp.shape and np.array_equal(out.affine, inp.affine)
        assert json.loads((tmp_path / "pred" / name.replace(".nii.gz", ".json")).read_text())["case"]
    again = medattn("infer", ckpt, tmp_path / "data" / "imagesTs", "-o", tmp_path / "pred", "--no-progress")
    assert "0 predicted, 2 skipped" in again.stdout
    proc = medattn("evaluate", tmp_path / "pred", tmp_path / "data" / "labelsTs", "--labels", ds,
                   "-o", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["cases"] == 2 and set(summary["per_class"]) == {"organ_a", "organ_b"}
    assert "organ_a" in proc.stdout and (tmp_path / "eval" / "metrics.csv").is_file()


def test_info_lists_models_and_configs():
    proc = medattn("info")
    assert proc.returncode == 0 and "attention_unet" in proc.stdout and "demo_3d" in proc.stdout


@pytest.mark.parametrize("cmd", ["train", "infer", "evaluate", "synth", "demo", "run", "watch"])
def test_every_command_has_help(cmd):
    proc = medattn(cmd, "--help")
    assert proc.returncode == 0 and "usage: medattn" in proc.stdout
