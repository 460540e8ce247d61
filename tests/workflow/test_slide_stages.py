"""The whole-slide chain as a workflow: synthetic slides → MIL training (features extracted on the way)
→ slide inference → slide-level evaluation → counterfactual explanation → report, then a cached re-run."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from support.html_checks import assert_figure_not_blank, parse_report

from medattn.workflow.runner import run_workflow
from medattn.workflow.spec import load_workflow

SMALL = ["patch.size=128", "encoder.num_workers=0", "train.folds=2", "train.epochs=4", "train.batch_size=4",
         "train.lr=0.001", "model.kwargs={embed_dim: 16, attention_dim: 8, dropout: 0.0}"]
NAMES = ["slides", "test_slides", "model", "predictions", "evaluation", "explanation", "report"]


def _stages() -> list[dict]:
    return [
        {"name": "slides", "kind": "synth_slides",
         "params": {"n_slides": 6, "width": 1024, "height": 768, "seed": 0}},
        {"name": "test_slides", "kind": "synth_slides",
         "params": {"n_slides": 2, "width": 1024, "height": 768, "positive_fraction": 1.0, "seed": 1}},
        {"name": "model", "kind": "train", "config": "mil_abmil", "set": SMALL,
         "inputs": {"dataset": "@slides/slides.csv"}},
        {"name": "predictions", "kind": "infer",
         "inputs": {"checkpoint": "@model/fold_0/seed_0/best.pt", "images": "@test_slides/slides"}},
        {"name": "evaluation", "kind": "evaluate",
         "inputs": {"predictions": "@predictions", "references": "@test_slides/slides.csv"}},
        {"name": "explanation", "kind": "explain", "params": {"experiments": "single_removal,ranked_removal,"
                                                                              "greedy_necessity,region_remove"},
         "inputs": {"checkpoint": "@model/fold_0/seed_0/best.pt", "input": "@test_slides/slides/slide_000.tif",
                    "region": "@test_slides/annotations/slide_000.geojson"}},
        {"name": "report", "kind": "report",
         "inputs": {"explanation": "@explanation", "metrics": "@evaluation/metrics.json"}},
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, wf_helpers):
    _, write = wf_helpers
    root = tmp_path_factory.mktemp("slide_wf")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = write(root / "slides.yaml", _stages(), name="slides")
        result = run_workflow(load_workflow(path), root / "run", progress=False, echo=lambda _: None)
    finally:
        torch.set_num_threads(before)
    return path, root / "run", result


def test_chain_runs_every_stage_and_links_the_outputs(finished):
    _, run, result = finished
    assert result.ran == NAMES
    assert [s["status"] for s in result.manifest["stages"]] == ["ran"] * len(NAMES)
    bags = sorted(p.stem for p in (run / "model" / "bags").glob("*.h5"))  # extracted by the train stage
    assert bags == [f"slide_{i:03d}" for i in range(6)]
    summary = json.loads((run / "model" / "summary.json").read_text())
    assert summary["folds"] == 2 and summary["n_slides"] == 6
    with open(run / "predictions" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slide_id"] for r in rows] == ["slide_000", "slide_001"]
    assert all(abs(float(r["p_normal"]) + float(r["p_tumour"]) - 1) < 1e-5 for r in rows)
    for sid in ("slide_000", "slide_001"):
        assert (run / "predictions" / sid / "heatmap.png").is_file()
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["n_slides"] == 2 and metrics["task"] == "classification"
    csvs = sorted(p.stem for p in (run / "explanation" / "counterfactuals").glob("*.csv"))
    assert csvs == ["greedy_necessity", "ranked_removal", "region_remove", "single_removal"]


def test_report_stage_embeds_the_figures_and_the_metrics(finished):
    _, run, _ = finished
    page = run / "report" / "report.html"
    parser = parse_report(page)
    assert not [u for u in parser.urls if u.startswith(("http:", "https:", "//"))]
    for figure_id in parser.figures:
        assert_figure_not_blank(parser, figure_id)
    assert len(parser.figures) >= 3
    assert "balanced_accuracy" in page.read_text()


def test_second_run_is_cached(finished, tmp_path):
    path, run, _ = finished
    again = run_workflow(load_workflow(path), run, progress=False, echo=lambda _: None)
    assert again.ran == [] and again.skipped == NAMES
