"""Sharded inference (``medattn infer --shard i/n``): deterministic, disjoint, complete and resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.checkpoints import nearest_centre_checkpoint

from medattn.cli import main
from medattn.engine.infer import infer
from medattn.io import Geometry, read_image, write_image

NAMES = [f"case_{i:03d}" for i in range(7)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, folder of 7 small 3-D images whose right half is bright)."""
    root = tmp_path_factory.mktemp("shards")
    images = root / "images"
    geometry = Geometry.from_arrays((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    for i, name in enumerate(NAMES):
        image = np.zeros((1, 12, 10, 4), np.float32)
        image[:, 6:] = 100.0 + i
        write_image(image, images / f"{name}.nii.gz", geometry)
    return nearest_centre_checkpoint(root / "model.pt"), images


def test_shards_cover_every_case_exactly_once_and_resume(folder, tmp_path):
    ckpt, images = folder
    out = tmp_path / "out"
    done = [infer(ckpt, [images], out, shard=f"{i}/3", progress=False).done for i in range(3)]
    assert sorted(c for d in done for c in d) == NAMES and [len(d) for d in done] == [3, 2, 2]
    assert done[1] == NAMES[1::3]  # every 3rd case by name from the 2nd
    label = read_image(out / "case_004.nii.gz").array
    assert label[0, 6:].min() == 1 and label[0, :6].max() == 0
    # Input order does not matter; a finished shard is skipped when run again (resumable).
    files = sorted(images.glob("*.nii.gz"), reverse=True)
    again = infer(ckpt, files, out, shard=(1, 3), progress=False)
    assert again.done == [] and again.skipped == NAMES[1::3]
    # An interrupted shard: its missing case is the only one predicted on the rerun.
    (out / "case_004.json").unlink()
    rerun = infer(ckpt, [images], out, shard="1/3", progress=False)
    assert rerun.done == ["case_004"] and rerun.skipped == ["case_001"]


def test_launcher_rank_selects_the_shard(folder, tmp_path, monkeypatch):
    ckpt, images = folder
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert infer(ckpt, [images], tmp_path / "out", progress=False).done == NAMES[1::2]
    assert infer(ckpt, [images], tmp_path / "out2", progress=False, shard="0/1").done == NAMES  # explicit wins


def test_cli_shard_option(folder, tmp_path, capsys):
    ckpt, images = folder
    assert main(["infer", str(ckpt), str(images), "-o", str(tmp_path / "out"), "--shard", "2/4",
                 "--no-progress"]) == 0
    assert "2 predicted" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").glob("case_*.json")) == ["case_002.json", "case_006.json"]
    assert main(["infer", str(ckpt), str(images), "-o", str(tmp_path / "out"), "--shard", "4/4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shard: '4/4' needs n >= 1 and 0 <= i < n" in err[0]
