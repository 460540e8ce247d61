"""Running workflows for real (tiny training): caching, re-runs, selection, failure and resume, records."""

from __future__ import annotations

import json
import shutil

import pytest

from medattn.workflow.cache import STAMP, read_stamp
from medattn.workflow.runner import run_workflow
from medattn.workflow.spec import WorkflowError, load_workflow

NAMES = ["data", "model", "predictions", "evaluation"]


@pytest.fixture(scope="module")
def first(tmp_path_factory, wf_helpers):
    """One complete run of the tiny workflow: (workflow file, run folder, result)."""
    tiny_stages, write = wf_helpers
    root = tmp_path_factory.mktemp("wf")
    path = write(root / "tiny.yaml", tiny_stages())
    result = run_workflow(load_workflow(path), root / "run", progress=False, echo=lambda _: None)
    return path, root / "run", result


@pytest.fixture
def run_copy(first, tmp_path):
    """A private copy of the finished run folder (caching works on content, so a copy is up to date)."""
    path, run, _ = first
    shutil.copytree(run, tmp_path / "run")
    return path, tmp_path / "run"


def _stamps(run):
    return {n: read_stamp(run / n)["finished"] for n in NAMES}


def test_first_run_runs_everything_and_records_it(first):
    _, run, result = first
    assert result.ran == NAMES and result.skipped == []
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["medattn_version"] == "0.1.0"
    assert {"torch", "monai", "python"} <= set(manifest["versions"]) and manifest["device"]["type"] in ("cpu", "cuda")
    stages = {s["name"]: s for s in manifest["stages"]}
    assert [s["name"] for s in manifest["stages"]] == NAMES
    for name in NAMES:
        assert stages[name]["status"] == "ran" and stages[name]["duration_s"] > 0
        assert len(stages[name]["output_sha256"]) == 64 and stages[name]["key"] == read_stamp(run / name)["key"]
        assert (run / "logs" / f"{name}.log").is_file()
    assert stages["model"]["inputs"]["dataset"]["ref"] == "@data/dataset.json"
    assert (run / "model" / "checkpoints" / "best.pt").is_file() and (run / "evaluation" / "metrics.csv").is_file()
    assert not list(run.glob(".*.partial-*"))
    # the run's records point at the final folders, not at the temporary ones
    assert f"output_dir: {run / 'model'}" in (run / "model" / "config.yaml").read_text()
    index = (run / "index.html").read_text()
    for href in ('href="data"', 'href="model/checkpoints/best.pt"', 'href="predictions"',
                 'href="evaluation/metrics.csv"', 'href="logs/model.log"', 'href="manifest.json"'):
        assert href in index
    assert "organ_a" in index  # the evaluation table is shown inline


def test_second_run_does_nothing(run_copy):
    path, run = run_copy
    before = _stamps(run)
    lines: list[str] = []
    result = run_workflow(load_workflow(path), run, progress=False, echo=lines.append)
    assert result.ran == [] and result.skipped == NAMES
    assert lines == [f"[{i}/4] {n} ({k}): up to date, skipped" for i, (n, k) in
                     enumerate(zip(NAMES, ["synth", "train", "infer", "evaluate"]), 1)]
    assert _stamps(run) == before
    assert {s["status"] for s in json.loads((run / "manifest.json").read_text())["stages"]} == {"skipped"}


def test_changing_one_value_reruns_that_stage_and_those_after(run_copy):
    path, run = run_copy
    before = _stamps(run)
    result = run_workflow(load_workflow(path, ["evaluation.params.nsd_tolerance=2"]), run, progress=False,
                          echo=lambda _: None)
    assert result.ran == ["evaluation"] and json.loads((run / "evaluation" / "summary.json").read_text())

    lines: list[str] = []
    wf = load_workflow(path, ["evaluation.params.nsd_tolerance=2", "model.config.train.epochs=3"])
    dry = run_workflow(wf, run, dry_run=True, echo=lines.append)
    assert dry.ran == ["model", "predictions", "evaluation"]
    assert lines[1] == "[2/4] model (train): would run — its configuration changed (train.epochs: 2 → 3)"
    assert lines[2] == "[3/4] predictions (infer): would run — stage 'model' that it reads runs first"
    assert _stamps(run)["model"] == before["model"]  # a dry run changes nothing

    result = run_workflow(wf, run, progress=False, echo=lambda _: None)
    assert result.ran == ["model", "predictions", "evaluation"] and result.skipped == ["data"]
    assert _stamps(run)["data"] == before["data"]
    assert len((run / "model" / "log.csv").read_text().strip().splitlines()) == 1 + 3  # header + 3 epochs


def test_changed_input_content_reruns_the_reader(run_copy):
    path, run = run_copy
    case = run / "predictions" / "case_004.nii.gz"
    shutil.copy(run / "data" / "labelsTs" / "case_004.nii.gz", case)  # a different prediction
    lines: list[str] = []
    result = run_workflow(load_workflow(path), run, progress=False, echo=lines.append)
    assert result.ran == ["evaluation"], lines
    assert lines[3] == "[4/4] evaluation (evaluate): running — input 'predictions' changed"


def test_selection_flags(run_copy):
    path, run = run_copy
    wf = load_workflow(path)
    quiet = {"progress": False, "echo": lambda _: None}
    assert run_workflow(wf, run, only="predictions", **quiet).ran == ["predictions"]
    assert run_workflow(wf, run, **quiet).ran == ["evaluation"]  # it reads what --only re-made
    assert run_workflow(wf, run, from_stage="predictions", **quiet).ran == ["predictions", "evaluation"]
    assert run_workflow(wf, run, dry_run=True, force=True, **quiet).ran == NAMES
    with pytest.raises(WorkflowError, match="no stage named 'nope'"):
        run_workflow(wf, run, only="nope", **quiet)


def test_only_needs_the_outputs_it_reads(tmp_path, first):
    path, _, _ = first
    with pytest.raises(WorkflowError, match=r"stage 'predictions': input checkpoint=@model/checkpoints/best.pt: .* "
                                            r"does not exist \(stage 'model' has not finished; run it first\)"):
        run_workflow(load_workflow(path), tmp_path / "fresh", only="predictions", echo=lambda _: None)


def test_failed_stage_stops_the_chain_and_rerun_resumes_there(run_copy, wf_helpers):
    path, run = run_copy
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    stages[2]["params"] = {"blend": "triangular"}  # injected failure: infer rejects the blend mode
    bad = write(path.parent / "bad.yaml", stages)
    before = _stamps(run)
    with pytest.raises(WorkflowError) as info:
        run_workflow(load_workflow(bad), run, progress=False, echo=lambda _: None)
    log = run / "logs" / "predictions.log"
    message = str(info.value)
    assert message.startswith(f"{bad}: stage 'predictions' (infer) failed: ") and message.endswith(f"— log: {log}")
    assert "blend" in message and "\n" not in message
    assert "Traceback (most recent call last)" in log.read_text()
    manifest = json.loads((run / "manifest.json").read_text())
    status = {s["name"]: s["status"] for s in manifest["stages"]}
    assert manifest["status"] == "failed"
    assert status == {"data": "skipped", "model": "skipped", "predictions": "failed", "evaluation": "pending"}
    assert _stamps(run) == before  # earlier results (and the previous complete outputs) are kept
    assert not (run / "predictions" / "probabilities").exists()

    stages[2]["params"] = {"blend": "constant"}  # fixed
    result = run_workflow(load_workflow(write(bad, stages)), run, progress=False, echo=lambda _: None)
    assert result.skipped == ["data", "model"] and result.ran == ["predictions", "evaluation"]
    assert json.loads((run / "predictions" / "infer_settings.json").read_text())["settings"]["blend"] == "constant"
    assert not list(run.glob(".*.partial-*")) and not list(run.glob(".*.old"))
    assert (run / "predictions" / STAMP).is_file()


def test_one_run_at_a_time_per_run_folder(run_copy):
    import fcntl

    path, run = run_copy
    with (run / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(WorkflowError, match=r"another `medattn run` is using this run folder"):
            run_workflow(load_workflow(path), run, echo=lambda _: None)
