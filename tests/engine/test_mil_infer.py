"""MIL slide inference: `medattn infer` on bags and on synthetic slides (real subprocesses, real files)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from medattn.cli import main
from medattn.config import load_mil_config
from medattn.data.bags import read_bag, write_bag
from medattn.data.handcrafted import HandcraftedEncoder
from medattn.engine.mil_checkpoint import load_mil_checkpoint, save_mil_checkpoint
from medattn.engine.mil_infer import predict_bag
from medattn.models.abmil import GatedABMIL


def medattn(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medattn", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    encoder = HandcraftedEncoder()
    cfg = load_mil_config(None, ["data.classes=[normal,tumour]", "patch.size=128", "patch.magnification=20",
                                 "patch.min_tissue=0.3", "tissue.thumbnail_size=512", "infer.thumbnail_size=256",
                                 "encoder.num_workers=0", "encoder.batch_size=32"])
    torch.manual_seed(0)
    model = GatedABMIL(in_dim=encoder.dim, embed_dim=16, attention_dim=8, n_outputs=2)
    return save_mil_checkpoint(tmp_path_factory.mktemp("ckpt") / "mil.pt", model, cfg, {}, encoder.describe())


def _grid_bag(path: Path, n_cols: int, n_rows: int, dim: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    coords = np.array([(256 * c, 256 * r) for r in range(n_rows) for c in range(n_cols)], np.int64)
    return write_bag(path, rng.normal(size=(len(coords), dim)), coords,
                     {"slide_id": path.stem, "patch_size": 256, "patch_size_level0": 256, "level": 0,
                      "magnification": 20.0, "mpp": 0.5, "encoder": "handcrafted", "encoder_version": "1"})


def test_predict_bag_matches_the_model(checkpoint: Path, tmp_path: Path) -> None:
    mil = load_mil_checkpoint(checkpoint)
    bag = read_bag(_grid_bag(tmp_path / "a.h5", 3, 2, 70, 0))
    pred = predict_bag(mil, bag)
    with torch.no_grad():
        out = mil.model(torch.from_numpy(bag.features)[None])
    probs = torch.softmax(out["logits"], -1)[0].tolist()
    assert pred["outputs"] == pytest.approx(probs, rel=1e-5)
    assert pred["output_names"] == ["p_normal", "p_tumour"]
    assert pred["prediction"] == ["normal", "tumour"][int(np.argmax(probs))]
    assert pred["attention"].shape == (6,) and np.allclose(pred["attention"], out["attention"][0].numpy(), atol=1e-6)
    assert pred["attention_weights"].sum() == pytest.approx(1.0)
    assert np.allclose(pred["attention_weights"], torch.softmax(out["attention"][0].double(), 0).numpy())


def test_infer_bags_cli(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bags = tmp_path / "bags"
    _grid_bag(bags / "s1.h5", 4, 3, 70, 1)
    _grid_bag(bags / "s2.h5", 2, 2, 70, 2)
    _grid_bag(bags / "bad.h5", 2, 2, 5, 3)  # features of another encoder: fails alone
    out = tmp_path / "out"
    proc = medattn("infer", checkpoint, bags, "-o", out, "--no-progress")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medattn: error:")]
    assert len(errors) == 1 and "bad.h5" in errors[0] and "5 dimensions" in errors[0]
    assert "2 predicted" in proc.stdout and not (out / "bad").exists()

    mil = load_mil_checkpoint(checkpoint)
    table = {r["slide_id"]: r for r in _rows(out / "predictions.csv")}
    assert set(table) == {"s1", "s2"}
    assert list(_rows(out / "predictions.csv")[0]) == ["slide_id", "prediction", "p_normal", "p_tumour"]
    for sid, n, (w, h) in (("s1", 12, (1024, 768)), ("s2", 4, (512, 512))):
        folder = out / sid
        rec = json.loads((folder / "prediction.json").read_text())
        pred = predict_bag(mil, read_bag(bags / f"{sid}.h5"))
        assert rec["outputs"]["p_tumour"] == pytest.approx(pred["outputs"][1], rel=1e-6)
        assert float(table[sid]["p_tumour"]) == pytest.approx(pred["outputs"][1], rel=1e-6)
        assert table[sid]["prediction"] == rec["prediction"] == pred["prediction"]
        assert rec["checkpoint"]["sha256"] == mil.sha256 and rec["n_patches"] == n
        rows = _rows(folder / "attention.csv")
        assert [int(r["patch_index"]) for r in rows] == list(range(n))
        assert [(int(r["x"]), int(r["y"])) for r in rows] == [(256 * (i % (w // 256)), 256 * (i // (w // 256)))
                                                             for i in range(n)]
        assert np.allclose([float(r["attention"]) for r in rows], pred["attention"])
        assert sum(float(r["attention_weight"]) for r in rows) == pytest.approx(1.0)
        with h5py.File(folder / "attention.h5") as f:
            assert f["attention"].shape == (n,) and f["coords"].shape == (n, 2)
        # blank canvas sized by the coordinates: longest side 256 px (infer.thumbnail_size), plus bands
        ds = max(w, h) / 256
        img = Image.open(folder / "heatmap.png")
        assert img.width == round(w / ds) and round(h / ds) + 40 <= img.height <= round(h / ds) + 90
        assert rec["heatmap"]["source"] == "blank"

    # finished slides are skipped; --overwrite recomputes; --shard picks every n-th slide by id
    assert main(["infer", str(checkpoint), str(bags / "s1.h5"), str(bags / "s2.h5"), "-o", str(out),
                 "--no-progress"]) == 0
    assert "0 predicted, 2 skipped" in capsys.readouterr().out
    assert main(["infer", str(checkpoint), str(bags / "s2.h5"), "-o", str(out), "--no-progress",
                 "--overwrite"]) == 0
    assert "1 predicted, 0 skipped" in capsys.readouterr().out
    assert len(_rows(out / "predictions.csv")) == 2  # rebuilt from every prediction.json
    shard_out = tmp_path / "shard"
    assert main(["infer", str(checkpoint), str(bags / "s1.h5"), str(bags / "s2.h5"), "-o", str(shard_out),
                 "--no-progress", "--shard", "1/2"]) == 0
    assert [r["slide_id"] for r in _rows(shard_out / "predictions.csv")] == ["s2"]


def test_infer_slides_cli(checkpoint: Path, tmp_path: Path) -> None:
    from medattn.data.wsi_synth import write_synthetic_slides
    from medattn.io.slide import open_slide

    slides_csv = write_synthetic_slides(tmp_path / "synth", n_slides=1, size=(1024, 768), positive_fraction=1.0)
    good = slides_csv.parent / "slides" / "slide_000.tif"
    with open_slide(good) as slide:
        png = tmp_path / "in" / "nompp.png"  # a plain image without resolution metadata: needs --mpp
        png.parent.mkdir()
        Image.fromarray(slide.read_region((0, 0), 0, (1024, 768))).save(png)
    broken = tmp_path / "in" / "broken.tif"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    out = tmp_path / "out"
    proc = medattn("infer", checkpoint, good, png, broken, "-o", out, "--no-progress", "--mpp", "0.5")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medattn: error:")]
    assert len(errors) == 1 and "broken.tif" in errors[0], proc.stderr
    assert "2 predicted" in proc.stdout
    for sid in ("slide_000", "nompp"):
        folder = out / sid
        assert {p.name for p in folder.iterdir()} >= {"prediction.json", "attention.csv", "attention.h5",
                                                      "heatmap.png"}
        bag = read_bag(out / "bags" / f"{sid}.h5")
        rec = json.loads((folder / "prediction.json").read_text())
        assert rec["n_patches"] == len(bag) == len(_rows(folder / "attention.csv")) > 4
        assert rec["settings"]["mpp"] == 0.5 and rec["heatmap"]["source"].endswith((".tif", ".png"))
        assert Image.open(folder / "heatmap.png").width == 256  # the slide thumbnail (1024 px / 4)
    assert not (out / "broken").exists()
    assert [r["slide_id"] for r in _rows(out / "predictions.csv")] == ["nompp", "slide_000"]

    # a bag in <root>/bags/ with its slide in <root>/slides/: the heatmap is drawn over the slide
    bag = slides_csv.parent / "bags" / "slide_000.h5"
    bag.parent.mkdir()
    bag.write_bytes((out / "bags" / "slide_000.h5").read_bytes())
    assert main(["infer", str(checkpoint), str(bag), "-o", str(tmp_path / "from_bag"), "--no-progress"]) == 0
    rec = json.loads((tmp_path / "from_bag" / "slide_000" / "prediction.json").read_text())
    assert rec["heatmap"]["source"] == str(good) and rec["input_kind"] == "bag"
    first = json.loads((out / "slide_000" / "prediction.json").read_text())
    assert rec["outputs"] == pytest.approx(first["outputs"])
    assert Image.open(tmp_path / "from_bag" / "slide_000" / "heatmap.png").size == \
        Image.open(out / "slide_000" / "heatmap.png").size


def test_collect_inputs_rejects_bad_inputs(tmp_path: Path) -> None:
    from medattn.engine.mil_infer import collect_inputs
    from medattn.errors import DataError

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "...h5").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"notes\.txt: neither a slide"):
        collect_inputs([tmp_path / "notes.txt"])
    with pytest.raises(DataError, match="cannot name an output folder"):
        collect_inputs([tmp_path / "...h5"])
    with pytest.raises(DataError, match=r"no slides or \.h5 feature bags"):
        collect_inputs([tmp_path / "empty"])
    with pytest.raises(DataError, match="no such file"):
        collect_inputs([tmp_path / "missing.svs"])
    (tmp_path / "a").mkdir()
    _grid_bag(tmp_path / "a" / "s.h5", 1, 1, 3, 0)
    _grid_bag(tmp_path / "s.h5", 1, 1, 3, 0)
    with pytest.raises(DataError, match="two inputs for slide 's'"):
        collect_inputs([tmp_path / "a", tmp_path / "s.h5"])
