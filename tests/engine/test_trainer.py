"""Training: learning, exact resume, determinism, NaN handling, early stopping, checkpoint contents."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medattn.config import load_config
from medattn.engine.checkpoint import load_checkpoint
from medattn.engine.trainer import read_log, train
from medattn.errors import TrainingError
from medattn.io import read_image, write_image


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.slow
def test_training_on_phantoms_reaches_dice_08(tmp_path):
    """The demo configuration learns the synthetic organs: validation Dice ≥ 0.8 (whole cases)."""
    from medattn.data.synth import write_synthetic_dataset

    ds = write_synthetic_dataset(tmp_path / "data", spatial_dims=3, n_train=8, n_test=0, seed=0)
    cfg = load_config("demo_3d", [f"data.dataset={ds}", f"output_dir={tmp_path / 'run'}"])
    result = train(cfg, progress=False)
    assert result.best_metric >= 0.8, result.history
    log = read_log(tmp_path / "run")
    assert len(log) == cfg.train.epochs and log[-1]["train_loss"] < log[0]["train_loss"]
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt["train_state"]["best_metric"] == pytest.approx(result.best_metric)


def test_resume_matches_an_uninterrupted_run(synth3d, tmp_path, tiny):
    full = train(tiny(synth3d, tmp_path / "full", "train.epochs=3"), progress=False)
    train(tiny(synth3d, tmp_path / "split", "train.epochs=1"), progress=False)
    resumed = train(tiny(synth3d, tmp_path / "split", "train.epochs=3"), resume=True, progress=False)
    assert_same_weights(full.last_checkpoint, resumed.last_checkpoint)
    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "split")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r["val_dice"] for r in a] == [r["val_dice"] for r in b]
    assert load_checkpoint(resumed.last_checkpoint)["train_state"]["epoch"] == 3


def test_same_seed_same_run_with_workers(synth3d, tmp_path, tiny):
    r1 = train(tiny(synth3d, tmp_path / "a", "data.num_workers=2"), progress=False)
    r2 = train(tiny(synth3d, tmp_path / "b", "data.num_workers=2"), progress=False)
    assert_same_weights(r1.last_checkpoint, r2.last_checkpoint)
    r3 = train(tiny(synth3d, tmp_path / "c", "data.num_workers=2", "seed=7"), progress=False)
    w1, w3 = weights(r1.last_checkpoint), weights(r3.last_checkpoint)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)


def test_checkpoint_is_self_describing_and_weights_only(synth3d, tmp_path, tiny):
    result = train(tiny(synth3d, tmp_path / "run", "train.epochs=1"), progress=False)
    raw = torch.load(result.last_checkpoint, weights_only=True)
    assert raw["format"] == "medattn-checkpoint" and raw["medattn"]
    assert raw["model"]["name"] == "attention_unet"
    assert raw["model"]["kwargs"]["in_channels"] == 1 and raw["model"]["kwargs"]["out_channels"] == 3
    assert raw["labels"] == {"0": "background", "1": "organ_a", "2": "organ_b"}
    assert raw["preprocess"]["orientation"] == "RAS" and raw["preprocess"]["target_spacing"] == [1.6, 1.6, 4.0]
    assert raw["patch_size"] == [16, 16, 8] and raw["spatial_dims"] == 3
    ts = raw["train_state"]
    assert {"optimizer", "scheduler", "scaler", "rng", "epoch", "history"} <= set(ts)
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "splits.json").is_file()


def test_median_target_spacing_is_recorded(synth3d, tmp_path, tiny):
    result = train(tiny(synth3d, tmp_path / "run", "train.epochs=1", "preprocess.target_spacing=median",
                               "train.val_every=5"), progress=False)
    spacing = load_checkpoint(result.last_checkpoint)["preprocess"]["target_spacing"]
    spacings = sorted(read_image(p).geometry.spacing for p in sorted((synth3d.parent / "imagesTr").iterdir()))
    assert sorted(spacing) == pytest.approx(sorted(spacings[0]), abs=1e-4)


def test_resume_extends_epochs_and_refuses_overwrite(synth3d, tmp_path, tiny):
    cfg = tiny(synth3d, tmp_path / "run", "train.epochs=1", "train.val_every=5")
    train(cfg, progress=False)
    with pytest.raises(TrainingError, match="use --resume"):
        train(cfg, progress=False)
    with pytest.raises(TrainingError, match="already finished 1 epochs"):
        train(cfg, resume=True, progress=False)
    train(tiny(synth3d, tmp_path / "run", "train.epochs=2", "train.val_every=5"), resume=True,
          progress=False)
    assert [r["epoch"] for r in read_log(tmp_path / "run")] == [1, 2]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(synth3d, tmp_path, tiny):
    data = tmp_path / "data"
    shutil.copytree(synth3d.parent, data)
    cfg = tiny(data / "dataset.json", tmp_path / "run", "train.epochs=1", "train.val_every=5",
                      "data.val_fraction=0.0")
    first = train(cfg, progress=False)
    before = first.last_checkpoint.read_bytes()
    # corrupt every training image with NaNs: the loss of the next epoch is NaN
    for f in (data / "imagesTr").iterdir():
        img = read_image(f)
        arr = img.array[0].astype(np.float32)
        arr[::3] = np.nan
        write_image(arr, f, img.geometry, reference=img)
    with pytest.raises(TrainingError) as e:
        train(tiny(data / "dataset.json", tmp_path / "run", "train.epochs=2", "train.val_every=5",
                          "data.val_fraction=0.0"), resume=True, progress=False)
    msg = str(e.value)
    assert "loss became nan at epoch 2" in msg and "last good checkpoint" in msg and "\n" not in msg
    assert first.last_checkpoint.read_bytes() == before
    assert load_checkpoint(first.last_checkpoint)["train_state"]["epoch"] == 1


def test_early_stopping(synth3d, tmp_path, tiny):
    result = train(tiny(synth3d, tmp_path / "run", "train.epochs=6", "train.lr=1e-12",
                               "train.early_stopping_patience=2"), progress=False)
    # the Dice cannot improve with lr ~ 0: best at epoch 1, then two stale validations
    assert result.best_epoch == 1 and len(result.history) == 3


def test_disk_and_no_cache_train_identically_to_memory_cache(synth3d, tmp_path, tiny):
    runs = {c: train(tiny(synth3d, tmp_path / c, "train.epochs=1", "train.val_every=5", f"data.cache={c}"),
                     progress=False) for c in ("memory", "disk", "none")}
    assert_same_weights(runs["memory"].last_checkpoint, runs["disk"].last_checkpoint)
    assert_same_weights(runs["memory"].last_checkpoint, runs["none"].last_checkpoint)
    assert any((tmp_path / "disk" / "cache" / "train").iterdir())  # PersistentDataset wrote its cache
