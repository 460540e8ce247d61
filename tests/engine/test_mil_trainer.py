"""Cross-validated MIL training on planted-signal bags: learning, attention, survival, outputs, resume, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support.processes import launcher_env, wait_for

from medattn.cli import main
from medattn.config import load_mil_config
from medattn.data.bag_synth import planted_bags, write_planted_bags
from medattn.data.bags import read_bag
from medattn.engine.mil_checkpoint import load_mil_checkpoint
from medattn.engine.mil_trainer import train_mil
from medattn.errors import ConfigError, TrainingError

SMALL = ["model.kwargs={embed_dim: 64, attention_dim: 32, dropout: 0.0}", "train.batch_size=8", "train.lr=0.001"]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _config(csv_path: Path, run: Path, *overrides: str):
    return load_mil_config(None, [f"data.slides_csv={csv_path}", f"data.bags_dir={csv_path.parent / 'bags'}",
                                  f"output_dir={run}", *SMALL, *overrides])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and do not fight the other test processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """120 bags of 100–200 patches (D = 32), half positive, with known positive patches."""
    return write_planted_bags(tmp_path_factory.mktemp("planted") / "data", planted_bags(120, (100, 200), 32, seed=0))


@pytest.fixture(scope="module")
def classified(planted, tmp_path_factory):
    run = tmp_path_factory.mktemp("cls") / "run"
    cfg = _config(planted, run, "train.folds=3", "train.epochs=20", "train.early_stopping_patience=5")
    return train_mil(cfg, progress=False)


def test_abmil_learns_planted_bags_with_held_out_auc_above_0_95(classified):
    assert [(m["fold"], m["seed"]) for m in classified.metrics] == [(0, 0), (1, 0), (2, 0)]
    assert all(m["auc"] >= 0.95 for m in classified.metrics), classified.table()
    assert classified.summary["auc"]["mean"] >= 0.95 and classified.summary["balanced_accuracy"]["mean"] >= 0.85


def test_top_attention_patches_are_the_planted_positives(classified, planted):
    instances: dict[str, list[int]] = {}
    with open(planted.parent / "instances.csv") as fh:
        for row in csv.DictReader(fh):
            instances.setdefault(row["slide_id"], []).append(int(row["positive"]))
    splits = json.loads((classified.run_dir / "splits.json").read_text())["folds"]
    labels = {r["slide_id"]: r["label"] for r in _read_csv(planted)}
    hits = []
    for fold in splits:
        mil = load_mil_checkpoint(classified.checkpoints[f"fold_{fold['fold']}/seed_0"])
        for sid in fold["test"]:
            if labels[sid] != "positive":
                continue
            bag = read_bag(planted.parent / "bags" / f"{sid}.h5")
            with torch.no_grad():
                scores = mil.model(torch.from_numpy(bag.features))["attention"][0].numpy()
            hits.append(np.mean(np.asarray(instances[sid])[np.argsort(-scores)[:5]]))
    assert len(hits) == 60 and np.mean(hits) >= 0.9


def test_run_folder_holds_checkpoints_logs_predictions_and_summary(classified, planted):
    run = classified.run_dir
    for name in ("config.yaml", "splits.json", "predictions.csv", "metrics.csv", "summary.json"):
        assert (run / name).is_file(), name
    with open(run / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["slide_id", "fold", "seed", "prediction", "p_negative", "p_positive"]
    assert sorted(r["slide_id"] for r in rows) == sorted(r["slide_id"] for r in _read_csv(planted))
    assert all(abs(float(r["p_negative"]) + float(r["p_positive"]) - 1) < 1e-5 for r in rows)
    for k in range(3):
        folder = run / f"fold_{k}" / "seed_0"
        log = _read_csv(folder / "log.csv")
        assert list(log[0]) == ["epoch", "train_loss", "val_loss", "val_score", "time_s"]
        mil = load_mil_checkpoint(folder / "best.pt")
        assert mil.classes == ["negative", "positive"] and mil.encoder["name"] == "planted"
        assert mil.encoder["dim"] == 32 and mil.task["type"] == "classification"
        splits = json.loads((run / "splits.json").read_text())
        train_ids = next(f for f in splits["folds"] if f["fold"] == k)["train"]
        # the model standardises features with the training bags' statistics, stored in its state
        feats = np.concatenate([read_bag(planted.parent / "bags" / f"{sid}.h5").features for sid in train_ids])
        np.testing.assert_allclose(mil.model.feature_mean.numpy(), feats.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(1 / mil.model.feature_scale.numpy(), feats.std(0), rtol=1e-3)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["summary"]["auc"]["mean"] == pytest.approx(np.mean([m["auc"] for m in classified.metrics]))
    assert "mean ± std" in classified.table()


@pytest.mark.parametrize("loss", ["cox", "nll"])
def test_survival_head_reaches_held_out_c_index_above_0_7(planted, tmp_path, loss):
    cfg = _config(planted, tmp_path / "run", "task.type=survival", f"task.survival_loss={loss}", "train.folds=3",
                  "train.epochs=20", "train.early_stopping_patience=5", "train.max_patches=32",
                  f"train.lr={0.001 if loss == 'cox' else 0.003}")
    result = train_mil(cfg, progress=False)
    assert result.summary["c_index"]["mean"] > 0.7, result.table()
    header = (tmp_path / "run" / "predictions.csv").read_text().splitlines()[0]
    assert header == "slide_id,fold,seed,prediction,risk"
    edges = load_mil_checkpoint(result.checkpoints["fold_0/seed_0"]).task["bin_edges"]
    assert (edges is None) == (loss == "cox")


def test_errors_missing_bag_existing_run_and_cox_batch(planted, tmp_path, capsys):
    (tmp_path / "bags").mkdir()
    rows = _read_csv(planted)[:12]
    for r in rows[:11]:
        os.link(planted.parent / "bags" / f"{r['slide_id']}.h5", tmp_path / "bags" / f"{r['slide_id']}.h5")
    with open(tmp_path / "slides.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"pipeline: mil\noutput_dir: {tmp_path / 'run'}\ndata: {{slides_csv: {tmp_path / 'slides.csv'}}}\n")
    assert main(["train", str(cfg), "--set", f"data.bags_dir={tmp_path / 'bags'}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"medattn: error: {tmp_path / 'slides.csv'}: row 13: slide {rows[11]['slide_id']!r}: no feature "
                   f"bag {tmp_path / 'bags' / rows[11]['slide_id']}.h5 (give data.slides_dir or a 'slide' column "
                   "to extract it)")
    with pytest.raises(ConfigError, match="Cox loss compares the bags of a step"):
        train_mil(_config(planted, tmp_path / "cox", "task.type=survival", "task.survival_loss=cox",
                          "train.batch_size=1"), progress=False)
    with pytest.raises(ConfigError, match=r"the bag was extracted with 256 px patches at 20x, the config says 128 px"):
        train_mil(_config(planted, tmp_path / "patch", "patch.size=128"), progress=False)
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "splits.json").write_text("{}")
    with pytest.raises(TrainingError, match="a run already exists here; use --resume"):
        train_mil(_config(planted, tmp_path / "run2"), progress=False)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medattn", "train", "mil_demo", "--no-progress", *args]


def test_demo_config_in_a_subprocess_resumes_exactly_after_a_kill(tmp_path):
    """`medattn train mil_demo` (2 folds) killed mid-run and resumed equals an uninterrupted run, byte for byte
    (both on one thread: the subprocess through OMP_NUM_THREADS=1, this process through ``one_thread``)."""
    data = write_planted_bags(tmp_path / "data", planted_bags(32, (3000, 4000), 64, seed=1))
    settings = [f"data.slides_csv={data}", f"data.bags_dir={data.parent / 'bags'}", "train.folds=2", "train.epochs=6",
                "train.early_stopping_patience=0"]
    common = [arg for setting in settings for arg in ("--set", setting)]
    train_mil(load_mil_config("mil_demo", [*settings, f"output_dir={tmp_path / 'ref'}"]), progress=False)
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(*common, "--set", f"output_dir={run}"), env=launcher_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run / "fold_0" / "seed_0" / "log.csv"
    try:
        wait_for(lambda: (log.exists() and len(log.read_text().splitlines()) >= 2) or proc.poll() is not None,
                 120, "an epoch of fold 0", interval=0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert not (run / "summary.json").exists() and not (run / "fold_1" / "seed_0" / "result.json").exists()
    resumed = subprocess.run(_cli(*common, "--set", f"output_dir={run}", "--resume"), capture_output=True, text=True,
                             env=launcher_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "mean ± std" in resumed.stdout and f"predictions: {run / 'predictions.csv'}" in resumed.stdout
    for name in ("predictions.csv", "metrics.csv", "fold_0/seed_0/log.csv", "fold_1/seed_0/log.csv"):
        a, b = (run / name).read_text(), (tmp_path / "ref" / name).read_text()
        if name.endswith("log.csv"):  # the per-epoch times differ
            a, b = ([line.rsplit(",", 1)[0] for line in t.splitlines()] for t in (a, b))
        assert a == b, name


def test_missing_bags_are_extracted_from_the_slides_first(tmp_path):
    from medattn.data.wsi_synth import write_synthetic_slides

    slides = write_synthetic_slides(tmp_path / "wsi", n_slides=6, size=(1024, 768), seed=0)
    cfg = load_mil_config(None, [f"data.slides_csv={slides}", f"output_dir={tmp_path / 'run'}", "train.folds=2",
                                 "train.epochs=2", "encoder.num_workers=0", "patch.size=128",
                                 "tissue.min_area_um2=1000", *SMALL])
    result = train_mil(cfg, progress=False)
    bags = sorted((tmp_path / "run" / "bags").glob("*.h5"))
    assert [b.stem for b in bags] == [f"slide_{i:03d}" for i in range(6)]
    bag = read_bag(bags[0])
    assert bag.attrs["encoder"] == "handcrafted" and len(bag) > 10
    mil = load_mil_checkpoint(result.checkpoints["fold_1/seed_0"])
    assert mil.encoder["name"] == "handcrafted" and mil.encoder["dim"] == bag.features.shape[1]
    assert len(_read_csv(result.predictions_csv)) == 6
