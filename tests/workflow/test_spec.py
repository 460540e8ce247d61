"""Workflow files: validation errors name the file and the problem; overrides; shipped workflows."""

from __future__ import annotations

import pytest

from medattn.workflow.spec import WorkflowError, load_workflow, shipped_workflows


def _error(path) -> str:
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    message = str(info.value)
    assert message.startswith(f"{path.resolve()}: ") and "\n" not in message
    return message.removeprefix(f"{path.resolve()}: ")


def test_stages_are_ordered_by_their_inputs(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    wf = load_workflow(write(tmp_path / "w.yaml", [stages[3], stages[1], stages[0], stages[2]]))
    assert [s.name for s in wf.stages] == ["data", "model", "predictions", "evaluation"]
    assert wf.stage("evaluation").upstream == ["predictions", "data"]
    assert wf.downstream("model") == ["model", "predictions", "evaluation"]
    assert wf.stage("data").params == {"spatial_dims": 3, "n_train": 4, "n_test": 2, "n_organs": 2, "channels": 1,
                                       "file_ending": None, "seed": 1, "oblique": True}
    assert wf.stage("evaluation").params["nsd_tolerance"] == 1.0


def test_unknown_stage_kind(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    stages[0]["kind"] = "synthesize"
    assert _error(write(tmp_path / "w.yaml", stages)) == (
        "stage 'data': unknown stage kind 'synthesize' (available: synth, train, infer, evaluate, synth_slides, "
        "synth_bags, features, explain, report)")


def test_explain_stage_needs_its_inputs(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    stages = [*tiny_stages(), {"name": "maps", "kind": "explain", "inputs": {"checkpoint": "@model/last.pt"}}]
    assert _error(write(tmp_path / "w.yaml", stages)) == (
        "stage 'maps': missing input 'input' (explain needs checkpoint, input, region, transplant, slide, metrics)")


def test_cycle(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    stages[1]["inputs"]["dataset"] = "@evaluation/summary.json"
    assert _error(write(tmp_path / "w.yaml", stages)) == (
        "cycle between stages: model → evaluation → predictions → model")


def test_stage_reading_itself_is_a_cycle(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    stages[2]["inputs"]["images"] = "@predictions"
    assert _error(write(tmp_path / "w.yaml", stages)) == "cycle between stages: predictions → predictions"


def test_missing_input_stage(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    stages[2]["inputs"]["checkpoint"] = "@training/checkpoints/best.pt"
    assert _error(write(tmp_path / "w.yaml", stages)) == (
        "stage 'predictions': missing input checkpoint=@training/checkpoints/best.pt: no stage named 'training'")


def test_missing_input_file(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    stages[3]["inputs"]["references"] = "labels/"
    message = _error(write(tmp_path / "w.yaml", stages))
    assert message == f"stage 'evaluation': missing input references: {tmp_path / 'labels'} does not exist"


def test_required_input_not_given(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    del stages[2]["inputs"]["images"]
    assert _error(write(tmp_path / "w.yaml", stages)) == (
        "stage 'predictions': missing input 'images' (infer needs checkpoint, images)")


def test_duplicate_output(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    stages[3]["output"] = "predictions"
    assert _error(write(tmp_path / "w.yaml", stages)) == (
        "duplicate output 'predictions': stages 'predictions' and 'evaluation'")


def test_duplicate_stage_name(tmp_path, wf_helpers):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    stages[3]["name"] = "predictions"
    stages[3]["output"] = "scores"
    assert _error(write(tmp_path / "w.yaml", stages)) == "duplicate stage name 'predictions'"


@pytest.mark.parametrize(("change", "expected"), [
    (lambda s: s[0]["params"].update(n_tran=3), "stage 'data': synth has no param 'n_tran' (params: spatial_dims"),
    (lambda s: s[0]["params"].update(n_train="4"), "stage 'data': params.n_train: expected int, got '4'"),
    (lambda s: s[1]["set"].append("train.epoch=3"), "stage 'model': --set train.epoch=3: train.epoch: unknown key"),
    (lambda s: s[2]["inputs"].update(images="@data/../../etc"), "stage 'predictions': inputs.images: '@data/../../etc'"
                                                                " must be @STAGE or @STAGE/path inside"),
    (lambda s: s[2].update(output="../outside"), "stage 'predictions': output '../outside' must be a folder name"),
    (lambda s: s[2].update(config="demo_3d"), "stage 'predictions': only train stages take config/set"),
    (lambda s: s[3].update(param={}), "stage 'evaluation': unknown key 'param' (known: config, inputs"),
])
def test_bad_stage_settings(tmp_path, wf_helpers, change, expected):
    tiny_stages, write = wf_helpers
    stages = tiny_stages()
    change(stages)
    assert _error(write(tmp_path / "w.yaml", stages)).startswith(expected)


def test_not_a_workflow(tmp_path):
    (tmp_path / "w.yaml").write_text("stages: {data: {kind: synth}}\n")
    assert _error(tmp_path / "w.yaml") == "expected a non-empty list under 'stages'"
    (tmp_path / "w.yaml").write_text("stages: [\n")
    assert _error(tmp_path / "w.yaml").startswith("invalid YAML: line 2")


def test_overrides(tmp_path, wf_helpers, monkeypatch):
    tiny_stages, write = wf_helpers
    path = write(tmp_path / "w.yaml", tiny_stages())
    wf = load_workflow(path, ["data.params.n_train=6", "model.config.train.epochs=5",
                              "evaluation.params.nsd_tolerance=2"])
    assert wf.stage("data").params["n_train"] == 6
    assert wf.stage("model").overrides[-1] == "train.epochs=5"
    assert wf.stage("evaluation").params["nsd_tolerance"] == 2.0
    monkeypatch.chdir(tmp_path.parent)
    wf = load_workflow(path, [f"evaluation.inputs.references={tmp_path.name}"])  # relative to the current folder
    assert wf.stage("evaluation").inputs["references"].path == str(tmp_path.resolve())
    with pytest.raises(WorkflowError, match=r"--set nope\.params\.x=1: expected STAGE\.KEY=VALUE with STAGE one of"):
        load_workflow(path, ["nope.params.x=1"])


def test_shipped_workflow_by_name():
    assert "seg3d_attention_unet" in shipped_workflows()
    wf = load_workflow("seg3d_attention_unet")
    assert [(s.name, s.kind) for s in wf.stages] == [("data", "synth"), ("run", "train"), ("predictions", "infer"),
                                                     ("evaluation", "evaluate"), ("explanation", "explain"),
                                                     ("report", "report")]
    assert wf.stage("run").config == "demo_3d"
    assert {"seg3d_dformer", "mil_abmil_hippo"} <= set(shipped_workflows())
    mil = load_workflow("mil_abmil_hippo")  # every shipped workflow validates (kinds, params, configs)
    assert [s.kind for s in mil.stages] == ["synth_slides", "synth_slides", "train", "infer", "evaluate", "explain",
                                            "report"]
    assert [s.kind for s in load_workflow("seg3d_dformer").stages][-1] == "explain"
    with pytest.raises(WorkflowError, match=r"no such workflow file \(shipped workflows: .*seg3d_attention_unet"):
        load_workflow("seg3d_nope")
