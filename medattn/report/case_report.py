"""The HTML report of a segmentation case explanation, built from the files of its folder only.

``medattn explain`` (segmentation checkpoint) writes into the case folder:

- ``explain.json``: ``kind: "segmentation"``, case name, inputs, checkpoint, the exact command, the
  run config, versions, labels, the explained target class, the settings and timings;
- ``explanation.npz``: the preprocessed image, prediction, gate maps and occlusion map
  (:func:`medattn.explain.segmentation.save_explanation`);
- ``prediction.<ext>``: the label map on the input grid (optional);
- ``metrics.json`` (optional): an evaluation summary to show.

:func:`build_case_report` regenerates every figure from those files (no model) and writes
``report.html``: input and prediction slices, gate maps per decoder level, occlusion sensitivity,
tables of the predicted classes and gate statistics, metrics, and the provenance block.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medattn.errors import DataError
from medattn.explain.segmentation import load_explanation, slice_overlays_png
from medattn.report.html import HtmlReport, flatten

__all__ = ["build_case_report", "read_json"]


def read_json(path: Path, required: bool = True) -> dict[str, Any] | None:
    """A JSON object from ``path`` (None when absent and not ``required``; DataError when unreadable)."""
    if not path.is_file():
        if required:
            raise DataError("missing (not an explanation folder?)", path)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read JSON: {e}", path) from e
    if not isinstance(data, dict):
        raise DataError("expected a JSON object", path)
    return data


def _class_rows(label: np.ndarray, labels: dict[int, str]) -> list[list[Any]]:
    counts = np.bincount(label.ravel().astype(np.int64), minlength=max(labels, default=0) + 1)
    total = max(int(label.size), 1)
    return [[k, labels.get(k, str(k)), int(counts[k]), float(counts[k]) / total] for k in sorted(labels)]


def build_case_report(folder: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``folder/report.html`` from ``explain.json`` and ``explanation.npz``; returns its path.

    Args:
        metrics: an evaluation summary to show (default: ``folder/metrics.json`` when present).

    Raises:
        DataError: the folder lacks the files or they are corrupt (naming the file).
    """
    folder = Path(folder)
    meta = read_json(folder / "explain.json") or {}
    if meta.get("kind") != "segmentation":
        raise DataError(f"kind is {meta.get('kind')!r}, not 'segmentation'", folder / "explain.json")
    expl = load_explanation(folder / "explanation.npz")
    target_name = expl.labels.get(expl.target, str(expl.target))
    page = HtmlReport(f"Segmentation explanation: {meta.get('case', folder.name)}",
                      subtitle=f"checkpoint {meta.get('checkpoint', '?')} · explained class {expl.target} "
                               f"({target_name})")
    inputs = ", ".join(str(p) for p in meta.get("inputs", []))
    page.section("Input and prediction",
                 page.paragraph(f"Input: {inputs}. Shown on the preprocessed grid the model sees "
                                f"(shape {list(expl.image.shape)}), slices through the centre "
                                f"{list(expl.centre)} of the predicted {target_name}; white line: its contour."),
                 page.figure(slice_overlays_png(expl, []), "fig-input", "input slices with the prediction contour"),
                 page.table(["class", "name", "voxels", "fraction"], _class_rows(expl.label, expl.labels),
                            table_id="prediction"),
                 section_id="prediction")
    if expl.gates.shape[0]:
        maps = [(f"gate level {lvl}", g) for lvl, g in enumerate(expl.gates)]
        inside = expl.label == expl.target
        rows = [[lvl, float(g.mean()), float(g[inside].mean()) if inside.any() else float("nan"),
                 float(g[~inside].mean()) if (~inside).any() else float("nan")] for lvl, g in enumerate(expl.gates)]
        page.section("Attention gates",
                     page.paragraph("Attention U-Net gate coefficients (0–1) per decoder level, level 0 = finest, "
                                    "upsampled to the grid."),
                     page.figure(slice_overlays_png(expl, maps), "fig-gates", "attention gate maps per decoder level"),
                     page.table(["level", "mean", f"mean inside {target_name}", "mean outside"], rows,
                                table_id="gate-stats"),
                     section_id="gates")
    if expl.occlusion.size:
        page.section("Occlusion sensitivity",
                     page.paragraph(f"Drop of the mean {target_name} probability over the predicted structure when "
                                    f"a box around each voxel is occluded (MONAI OcclusionSensitivity; settings "
                                    f"{meta.get('settings', {})}). Red: the region supports the prediction."),
                     page.figure(slice_overlays_png(expl, [("occlusion", expl.occlusion)], cmap="coolwarm",
                                                    symmetric=True), "fig-occlusion", "occlusion sensitivity map"),
                     section_id="occlusion")
    metrics = metrics if metrics is not None else read_json(folder / "metrics.json", required=False)
    if metrics:
        page.section("Metrics", page.key_values(flatten(metrics), "metrics"), section_id="metrics")
    if expl.timings:
        page.section("Timings", page.key_values({k: f"{v:.3f} s" for k, v in expl.timings.items()}, "timings"))
    page.provenance(meta.get("command"), meta.get("config"), meta.get("versions"))
    return page.write(folder / "report.html")
