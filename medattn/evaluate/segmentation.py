"""Folder evaluation: score a folder of predicted label maps against a folder of references.

Cases are matched by :func:`medattn.io.case_name` (``case_001.nii.gz`` ↔ ``case_001.nrrd``). Each
image is read with :func:`medattn.io.read_image` and must be a single-channel integer label map
(``Image.array`` of shape (1, X, Y[, Z]); 0 = background). Prediction and reference must share the
grid: same shape, and geometry (spacing, origin, direction) equal within 1e-4. Distances use the
reference's spacing. Metrics and the empty-mask convention are those of
:mod:`medattn.evaluate.metrics`; cases where a class is absent from both images count as perfect
(dice 1, hd95 0) in the means, and the CSV's ``ref_voxels``/``pred_voxels`` columns allow filtering.

Outputs (written atomically) in ``out_dir``:

- ``metrics.csv``: one row per case and class, columns :data:`CSV_COLUMNS`;
- ``summary.json``: ``{"per_class": {name: {metric: {"mean", "std", "n"}}}, "mean": {metric: mean
  of the per-class means}, "cases": N, "labels": {"value": name}, "nsd_tolerance_mm": tau}``;
  ``std`` is the population standard deviation over cases (ddof = 0).
"""

from __future__ import annotations

import csv
import io
import multiprocessing
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medattn.errors import ConfigError, DataError
from medattn.evaluate.metrics import METRICS, binary_metrics
from medattn.io import case_name, list_images, read_image
from medattn.io.atomic import atomic_write_json, atomic_write_text

CSV_COLUMNS: tuple[str, ...] = ("case", "class", "label", *METRICS, "ref_voxels", "pred_voxels")
GRID_ATOL = 1e-4
_BOTH_EMPTY = binary_metrics(np.zeros((1, 1), bool), np.zeros((1, 1), bool), (1.0, 1.0))


@dataclass
class _CaseResult:
    case: str
    pred_path: Path
    metrics: dict[int, dict[str, float]]  # label value -> binary_metrics
    ref_values: set[int]
    pred_values: set[int]


def _name_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _index_folder(folder: Path) -> dict[str, Path]:
    paths = list_images(folder)  # DataError if the folder does not exist
    if not paths:
        raise DataError("no images found", folder)
    cases: dict[str, Path] = {}
    for p in paths:
        name = case_name(p)
        if name in cases:
            raise DataError(f"two images for case {name!r}: {cases[name].name}, {Path(p).name}", folder)
        cases[name] = Path(p)
    return cases


def _pair_cases(pred_dir: Path, ref_dir: Path) -> list[tuple[str, Path, Path]]:
    preds, refs = _index_folder(pred_dir), _index_folder(ref_dir)
    no_ref = sorted(preds[c].name for c in preds.keys() - refs.keys())
    no_pred = sorted(refs[c].name for c in refs.keys() - preds.keys())
    problems = []
    if no_ref:
        problems.append(f"no reference in {ref_dir} for prediction(s) {_name_list(no_ref)}")
    if no_pred:
        problems.append(f"no prediction in {pred_dir} for reference(s) {_name_list(no_pred)}")
    if problems:
        raise DataError("; ".join(problems))
    return [(c, preds[c], refs[c]) for c in sorted(preds)]


def _label_array(path: Path, image) -> np.ndarray:
    """(X, Y[, Z]) int64 label map from a channel-first single-channel image."""
    arr = np.asarray(image.array)
    if arr.ndim < 3 or arr.shape[0] != 1:
        raise DataError(f"expected a single-channel label map (1, X, Y[, Z]), got shape {arr.shape}", path)
    arr = arr[0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            bad = arr[~np.isfinite(arr) | (arr != np.round(arr))].flat[0]
            raise DataError(f"label map has a non-integer value {bad}", path)
        arr = arr.astype(np.int64)
    return arr


def _values(arr: np.ndarray) -> set[int]:
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi < 1 << 16:  # O(n) instead of np.unique's sort
        return {int(v) for v in np.flatnonzero(np.bincount(arr.ravel().astype(np.intp, copy=False)))}
    return {int(v) for v in np.unique(arr)}


def _check_grid(pred_path: Path, pred, ref_path: Path, ref, p_arr: np.ndarray, r_arr: np.ndarray) -> None:
    if p_arr.shape != r_arr.shape:
        raise DataError(f"shape {p_arr.shape} differs from reference {ref_path} ({r_arr.shape})", pred_path)
    pg, rg = pred.geometry, ref.geometry
    diffs = [
        f"{field} {np.round(np.ravel(getattr(pg, field)), 4).tolist()} vs "
        f"{np.round(np.ravel(getattr(rg, field)), 4).tolist()}"
        for field in ("spacing", "origin", "direction")
        if not np.allclose(getattr(pg, field), getattr(rg, field), atol=GRID_ATOL)
    ]
    if diffs:
        raise DataError(f"geometry differs from reference {ref_path}: {'; '.join(diffs)}", pred_path)


def _evaluate_case(
    case: str, pred_path: Path, ref_path: Path, labels: dict[int, str] | None, nsd_tolerance: float
) -> _CaseResult:
    pred, ref = read_image(pred_path), read_image(ref_path)
    p_arr, r_arr = _label_array(pred_path, pred), _label_array(ref_path, ref)
    _check_grid(pred_path, pred, ref_path, ref, p_arr, r_arr)
    p_vals, r_vals = _values(p_arr), _values(r_arr)
    if labels is not None:
        allowed = set(labels) | {0}
        for path, vals in ((ref_path, r_vals), (pred_path, p_vals)):
            if vals - allowed:
                bad = min(vals - allowed)
                raise DataError(f"label value {bad} is not one of the labels {sorted(allowed)}", path)
        todo = sorted(labels)
    else:
        todo = sorted((p_vals | r_vals) - {0})
    spacing = ref.geometry.spacing
    metrics = {v: binary_metrics(p_arr == v, r_arr == v, spacing, nsd_tolerance) for v in todo}
    return _CaseResult(case, pred_path, metrics, r_vals, p_vals)


def _evaluate_case_args(args: tuple) -> _CaseResult:
    return _evaluate_case(*args)


def _normalize_labels(labels: Mapping[int, str]) -> dict[int, str]:
    try:
        out = {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"labels must map integer values to class names, got {dict(labels)}") from e
    if not out:
        raise ConfigError(f"labels has no foreground class (value != 0): {dict(labels)}")
    if len(set(out.values())) != len(out):
        raise ConfigError(f"labels has duplicate class names: {dict(labels)}")
    return dict(sorted(out.items()))


def _summarize(rows: list[dict], labels: dict[int, str], n_cases: int, nsd_tolerance: float) -> dict:
    per_class: dict[str, dict[str, dict[str, float]]] = {}
    for name in labels.values():
        values = {m: np.array([r[m] for r in rows if r["class"] == name], dtype=np.float64) for m in METRICS}
        per_class[name] = {
            m: {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)} for m, v in values.items()
        }
    mean = {m: float(np.mean([per_class[n][m]["mean"] for n in per_class])) for m in METRICS}
    return {
        "per_class": per_class,
        "mean": mean,
        "cases": n_cases,
        "labels": {str(k): v for k, v in labels.items()},
        "nsd_tolerance_mm": float(nsd_tolerance),
    }


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    out_dir: str | Path,
    labels: Mapping[int, str] | None = None,
    nsd_tolerance: float = 1.0,
    num_workers: int = 0,
) -> dict:
    """Evaluate every prediction in ``pred_dir`` against its reference in ``ref_dir``.

    Args:
        pred_dir, ref_dir: folders of label maps, matched by case name (formats may differ).
        out_dir: where ``metrics.csv`` and ``summary.json`` are written (created if needed).
        labels: label value -> class name (value 0 = background is skipped). ``None``: every value
            present in the references, named ``label_<k>``.
        nsd_tolerance: NSD tolerance in mm.
        num_workers: 0 evaluates in this process; N > 0 uses N worker processes.

    Returns:
        The summary dict written to ``summary.json`` (see the module docstring).

    Raises:
        DataError: unmatched cases, unreadable or multi-channel images, grid mismatch, or a label
            value outside ``labels`` (one line naming the file).
    """
    pred_dir, ref_dir, out_dir = Path(pred_dir), Path(ref_dir), Path(out_dir)
    given = None if labels is None else _normalize_labels(labels)
    jobs = [(c, p, r, given, float(nsd_tolerance)) for c, p, r in _pair_cases(pred_dir, ref_dir)]
    if num_workers > 0 and len(jobs) > 1:
        # spawn, not fork: the caller may hold torch/OpenMP threads (e.g. `medattn demo` after training)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), mp_context=ctx) as pool:
            results = list(pool.map(_evaluate_case_args, jobs))
    else:
        results = [_evaluate_case_args(j) for j in jobs]

    if given is None:
        found = sorted(set().union(*(r.ref_values for r in results)) - {0})
        if not found:
            raise DataError("no foreground label in any reference; pass labels explicitly", ref_dir)
        given = {v: f"label_{v}" for v in found}
        for r in results:
            extra = r.pred_values - set(given) - {0}
            if extra:
                msg = f"label value {min(extra)} does not occur in any reference {found}"
                raise DataError(msg, r.pred_path)

    rows = []
    for r in results:
        for value, name in given.items():
            m = r.metrics.get(value, _BOTH_EMPTY)
            rows.append({"case": r.case, "class": name, "label": value, **{k: m[k] for k in CSV_COLUMNS[3:]}})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "metrics.csv", buf.getvalue())
    summary = _summarize(rows, given, len(results), nsd_tolerance)
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def format_summary_table(summary: Mapping) -> str:
    """Aligned text table of the per-class means (Dice, IoU, HD95 in mm, NSD) plus a ``mean`` row."""
    tau = float(summary.get("nsd_tolerance_mm", 1.0))
    header = ["class", "Dice", "IoU", "HD95 mm", f"NSD@{tau:g}mm"]
    body = [[name, *(pc[m]["mean"] for m in METRICS)] for name, pc in summary["per_class"].items()]
    body.append(["mean", *(summary["mean"][m] for m in METRICS)])
    cells = [header] + [[r[0], *(f"{v:.2f}" if m == "hd95" else f"{v:.4f}" for m, v in zip(METRICS, r[1:]))]
                        for r in body]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
