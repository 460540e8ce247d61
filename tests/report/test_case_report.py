"""The segmentation case report, built from an explanation folder written by hand (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.html_checks import assert_figure_not_blank, parse_report

from medattn.errors import DataError
from medattn.explain.segmentation import SegmentationExplanation, save_explanation
from medattn.report import build_report
from medattn.report.case_report import build_case_report


def _folder(tmp_path: Path, with_gates: bool = True, with_occlusion: bool = True) -> Path:
    """A 3-D case: a bright ball labelled 1 in a (24, 20, 16) volume, gates high inside it."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (24, 20, 16)], indexing="ij"))
    dist = np.sqrt(((grid - np.array([12, 8, 8])[:, None, None, None]) ** 2).sum(0))
    ball = dist < 5
    image = (ball * 100 + grid[0]).astype(np.float32)
    gates = np.stack([np.where(ball, 0.9, 0.1), np.clip(1 - dist / 20, 0, 1)]).astype(np.float32)
    occlusion = (np.exp(-dist / 3) * 0.2).astype(np.float32)
    expl = SegmentationExplanation(image, ball.astype(np.uint8), gates if with_gates else np.zeros((0, 24, 20, 16)),
                                   occlusion if with_occlusion else np.zeros(0, np.float32), 1, (12, 8, 8),
                                   {0: "background", 1: "ball"}, {"predict": 0.1})
    save_explanation(expl, tmp_path / "explanation.npz")
    (tmp_path / "explain.json").write_text(json.dumps({
        "kind": "segmentation", "case": "case_7", "inputs": ["case_7_0000.nii.gz"], "checkpoint": "best.pt",
        "command": "medattn explain best.pt case_7_0000.nii.gz -o out", "config": {"model": {"name": "x"}},
        "versions": {"medattn": "0", "torch": "t", "monai": "m", "python": "3", "device": "cpu"},
        "settings": {"occlusion_mask_size": 8}}))
    return tmp_path


def test_case_report_figures_and_tables(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "metrics.json").write_text(json.dumps({"ball": {"dice": 0.91, "hd95": 1.5}}))
    parsed = parse_report(build_report(folder))
    for fig in ("fig-input", "fig-gates", "fig-occlusion"):
        assert_figure_not_blank(parsed, fig)
    n_ball = int((np.sqrt(((np.stack(np.meshgrid(*[np.arange(n) for n in (24, 20, 16)], indexing="ij"))
                           - np.array([12, 8, 8])[:, None, None, None]) ** 2).sum(0)) < 5).sum())
    rows = parsed.tables["prediction"]
    assert rows[0] == ["class", "name", "voxels", "fraction"]
    assert rows[1][:3] == ["0", "background", str(24 * 20 * 16 - n_ball)] and rows[2][:3] == ["1", "ball", str(n_ball)]
    gates = parsed.tables["gate-stats"]
    assert [r[0] for r in gates[1:]] == ["0", "1"]
    assert float(gates[1][2]) == pytest.approx(0.9, abs=1e-3) and float(gates[1][3]) == pytest.approx(0.1, abs=1e-3)
    assert dict(parsed.tables["metrics"]) == {"ball.dice": "0.91", "ball.hd95": "1.5"}
    assert dict(parsed.tables["versions"])["device"] == "cpu"


def test_sections_follow_what_was_computed(tmp_path: Path) -> None:
    parsed = parse_report(build_case_report(_folder(tmp_path, with_gates=False, with_occlusion=False)))
    assert sorted(parsed.figures) == ["fig-input"] and "gate-stats" not in parsed.tables


def test_bad_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"explain\.json: missing"):
        build_case_report(tmp_path)
    folder = _folder(tmp_path)
    (folder / "explanation.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"explanation\.npz: not a segmentation explanation"):
        build_case_report(folder)
