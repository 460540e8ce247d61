"""The slide (MIL) report, built from a real explanation of a planted-signal bag, and rebuilt from files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.explain_fixtures import mil_checkpoint, planted_folder, positive_bag
from support.html_checks import assert_figure_not_blank, parse_report

from medattn.cli import main
from medattn.errors import DataError
from medattn.explain.plots import read_csv_rows
from medattn.report import build_report
from medattn.report.slide_report import build_slide_report, patch_effects, top_patches

EXPERIMENTS = "single_removal,single_patch,ranked_removal,random_removal,greedy_necessity"


@pytest.fixture(scope="module")
def explained(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """An explanation folder of a positive planted bag (bag input, no slide) and its planted positives."""
    root = tmp_path_factory.mktemp("slide_report")
    bags, folder = planted_folder(root / "planted")
    ckpt = mil_checkpoint(root / "mil.pt", 16, bags, steps=60)
    i = positive_bag(bags)
    out = root / "explained"
    assert main(["explain", str(ckpt), str(folder / f"{bags.slide_ids[i]}.h5"), "-o", str(out), "--experiments",
                 EXPERIMENTS, "--seeds", "0,1,2", "--top-k", "4", "--no-progress"]) == 0
    return out, bags.instance_labels[i]


def test_report_shows_figures_and_the_planted_patches_as_most_necessary(explained) -> None:
    out, planted = explained
    parsed = parse_report(out / "report.html")
    for fig in ("fig-attention", "fig-curves", "fig-scatter", "fig-effects"):
        assert_figure_not_blank(parsed, fig)
    assert "fig-thumbnail" not in parsed.figures  # a bag without --slide has no thumbnail
    necessary = parsed.tables["necessary"]
    assert necessary[0][:6] == ["rank", "patch", "x", "y", "attention", "Δ removed"] and len(necessary) == 5
    assert all(planted[int(row[1])] for row in necessary[1:]), necessary
    assert float(necessary[1][5]) < 0  # removing the most necessary patch lowers p_tumour
    assert all(planted[int(row[1])] for row in parsed.tables["sufficient"][1:])
    experiments = {row[0]: row for row in parsed.tables["experiments"][1:]}
    assert set(experiments) == set(EXPERIMENTS.split(","))
    assert experiments["single_removal"][2] == str(len(planted) + 1)  # baseline + one row per patch
    outputs = dict(parsed.tables["outputs"][1:])
    assert float(outputs["p_tumour"]) > 0.5 and abs(float(outputs["p_tumour"]) + float(outputs["p_normal"]) - 1) < 1e-3
    assert not list((out / "crops").glob("*.png"))  # no slide, no crops


def test_rebuild_from_files_with_metrics_matches_the_tables(explained) -> None:
    out, _ = explained
    before = parse_report(out / "report.html")
    (out / "report.html").unlink()
    build_report(out, metrics={"auc": {"mean": 0.9, "std": 0.05}, "balanced_accuracy": [0.8, 0.1], "n": 12})
    after = parse_report(out / "report.html")
    assert sorted(after.figures) == sorted(before.figures)
    assert after.tables["necessary"] == before.tables["necessary"]
    assert dict(after.tables["metrics"]) == {"auc": "0.9 ± 0.05", "balanced_accuracy": "0.8 ± 0.1", "n": "12"}
    summary = json.loads((out / "counterfactuals" / "summary.json").read_text())
    effects = patch_effects(read_csv_rows(out / "counterfactuals" / "single_removal.csv"))
    assert len(effects) == summary["n_patches"]
    assert [int(r[1]) for r in after.tables["necessary"][1:]] == top_patches(effects, 4, largest=False)


def test_top_patches_breaks_ties_by_index() -> None:
    assert top_patches({3: 0.5, 1: 0.5, 2: -1.0, 0: 0.1}, 3, largest=True) == [1, 3, 0]
    assert top_patches({3: 0.5, 1: 0.5, 2: -1.0, 0: 0.1}, 2, largest=False) == [2, 0]


def test_missing_or_wrong_files_are_named(explained, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"explain\.json: missing"):
        build_slide_report(tmp_path)
    (tmp_path / "explain.json").write_text(json.dumps({"kind": "segmentation"}))
    with pytest.raises(DataError, match="not 'mil'"):
        build_slide_report(tmp_path)
    (tmp_path / "explain.json").write_text(json.dumps({"kind": "mil", "output_names": ["p_a"]}))
    with pytest.raises(DataError, match=r"attention\.csv"):
        build_slide_report(tmp_path)
