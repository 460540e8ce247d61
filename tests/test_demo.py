"""`medattn demo` runs the shipped seg3d_attention_unet workflow (shortened to one epoch here)."""

from __future__ import annotations

import json

from medattn.demo import run_demo


def test_demo_runs_the_workflow_and_a_second_run_only_reports(tmp_path, capsys):
    summary = run_demo(tmp_path / "demo", epochs=1, progress=False, n_train=4, n_test=2)
    out = capsys.readouterr().out
    assert "seg3d_attention_unet.yaml" in out and "[2/6] run (train): running" in out
    assert "mean" in out and "Dice" in out
    assert f"summary:     {tmp_path / 'demo' / 'evaluation' / 'summary.json'}" in out
    assert summary == json.loads((tmp_path / "demo" / "evaluation" / "summary.json").read_text())
    assert len((tmp_path / "demo" / "run" / "log.csv").read_text().strip().splitlines()) == 1 + 1
    assert len(list((tmp_path / "demo" / "predictions").glob("case_*.nii.gz"))) == 2
    assert (tmp_path / "demo" / "index.html").is_file()
    assert (tmp_path / "demo" / "report" / "report.html").is_file()
    assert (tmp_path / "demo" / "explanation" / "explanation.npz").is_file()

    again = run_demo(tmp_path / "demo", epochs=1, progress=False, n_train=4, n_test=2)
    out = capsys.readouterr().out
    assert "(0 stage(s) ran, 6 up to date)" in out and again == summary
