"""Scoring MIL prediction CSVs against the slide table (per fold × seed, mean ± std), and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from medattn.cli import main
from medattn.errors import DataError
from medattn.evaluate.mil_evaluate import evaluate_predictions, is_mil_predictions, write_rows_csv


@pytest.fixture
def cohort(tmp_path):
    """40 slides (normal/tumour) and out-of-fold predictions of 2 folds × 2 seeds with known scores."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    write_rows_csv(tmp_path / "slides.csv", [{"slide_id": f"s{i}", "patient_id": f"p{i}",
                                              "label": ["normal", "tumour"][y[i]]} for i in range(40)])
    rows, expected = [], []
    for fold in (0, 1):  # the order of the metric rows: by fold, then seed
        for seed in (0, 1):
            idx = np.arange(40)[np.arange(40) // 20 == fold]
            p = np.clip(y[idx] * 0.3 + rng.random(len(idx)) * 0.7, 0, 1)
            rows += [{"slide_id": f"s{i}", "fold": fold, "seed": seed, "prediction": "",
                      "p_normal": 1 - q, "p_tumour": q} for i, q in zip(idx, p)]
            pred = (p > 0.5).astype(int)
            expected.append({"auc": roc_auc_score(y[idx], p), "f1": f1_score(y[idx], pred),
                             "balanced_accuracy": balanced_accuracy_score(y[idx], pred)})
    write_rows_csv(tmp_path / "predictions.csv", rows)
    return tmp_path, expected


def test_classification_metrics_per_fold_and_seed_match_scikit_learn(cohort, tmp_path):
    root, expected = cohort
    result = evaluate_predictions(root / "predictions.csv", root / "slides.csv", tmp_path / "out")
    assert result["task"] == "classification" and result["classes"] == ["normal", "tumour"]
    assert result["n_slides"] == 40 and len(result["groups"]) == 4
    for got, want in zip(result["groups"], expected):
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-12)
    aucs = [e["auc"] for e in expected]
    assert result["summary"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert result["summary"]["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["summary"]["f1"]["n"] == 4
    assert (tmp_path / "out" / "metrics.csv").read_text().splitlines()[0] == \
        "fold,seed,n,auc,balanced_accuracy,f1,accuracy"


def test_survival_predictions_without_folds_give_one_c_index(tmp_path):
    write_rows_csv(tmp_path / "slides.csv", [
        {"slide_id": s, "patient_id": s, "time": t, "event": e}
        for s, t, e in [("a", 1, 1), ("b", 2, 1), ("c", 3, 0), ("d", 4, 1)]])
    # comparable pairs (i had the event, t_i < t_j): a<b, a<c, a<d, b<c, b<d → 5; risks order a>b>d>c
    write_rows_csv(tmp_path / "p.csv", [{"slide_id": s, "prediction": "", "risk": r}
                                        for s, r in [("a", 3.0), ("b", 2.0), ("c", 0.5), ("d", 1.0)]])
    result = evaluate_predictions(tmp_path / "p.csv", tmp_path / "slides.csv")
    assert result["task"] == "survival" and result["groups"] == [{"n": 4, "c_index": 1.0}]
    write_rows_csv(tmp_path / "p.csv", [{"slide_id": s, "risk": r} for s, r in [("a", 3), ("b", 0), ("d", 1)]])
    assert evaluate_predictions(tmp_path / "p.csv", tmp_path / "slides.csv")["groups"][0]["c_index"] == \
        pytest.approx(2 / 3)  # pairs a<b, a<d concordant; b<d discordant


def test_bad_prediction_files_name_the_file_and_row(cohort):
    root, _ = cohort
    write_rows_csv(root / "bad.csv", [{"slide_id": "s0", "p_normal": 0.5, "p_tumour": 0.5},
                                      {"slide_id": "zz", "p_normal": 0.5, "p_tumour": 0.5}])
    with pytest.raises(DataError, match=r"bad\.csv: row 3: slide 'zz' is not in the slide table"):
        evaluate_predictions(root / "bad.csv", root / "slides.csv")
    write_rows_csv(root / "bad.csv", [{"slide_id": "s0", "p_normal": "", "p_tumour": 0.5}])
    with pytest.raises(DataError, match="row 2: an output column"):
        evaluate_predictions(root / "bad.csv", root / "slides.csv")
    write_rows_csv(root / "bad.csv", [{"slide_id": "s0", "p_normal": 0.5, "p_maybe": 0.5}])
    with pytest.raises(DataError, match=r"slides\.csv: row 3, column 'label': unknown class 'tumour'"):
        evaluate_predictions(root / "bad.csv", root / "slides.csv")


def test_cli_evaluate_dispatches_csv_and_folders_to_mil(cohort, capsys):
    root, expected = cohort
    assert is_mil_predictions(root / "predictions.csv") and is_mil_predictions(root)
    assert not is_mil_predictions(root / "slides_dir_that_does_not_exist")
    assert main(["evaluate", str(root), str(root / "slides.csv"), "-o", str(root / "ev")]) == 0
    out = capsys.readouterr().out
    assert "classification: 40 slides" in out and "mean ± std" in out and "balanced_accuracy" in out
    rows = (Path(root) / "ev" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 5 and float(rows[1].split(",")[3]) == pytest.approx(expected[0]["auc"])
    assert main(["evaluate", str(root / "nope.csv"), str(root / "slides.csv")]) == 2
    assert "nope.csv: no such predictions file" in capsys.readouterr().err
