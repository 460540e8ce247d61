"""Slide-level evaluation of MIL predictions: AUC, balanced accuracy, F1 (and accuracy), or C-index.

``medattn evaluate PREDICTIONS.csv SLIDES.csv [-o OUT]`` scores a predictions CSV (the out-of-fold
``predictions.csv`` of ``medattn train``, or the ``predictions.csv`` of ``medattn infer``) against
the slide table. Output columns ``p_<class>`` mean classification, ``risk`` survival. Predictions
with ``fold``/``seed`` columns are scored per fold × seed and summarised as mean ± std (sample std)
over those; others form one group. Writes ``OUT/metrics.csv`` (one row per group) and
``OUT/metrics.json`` (task, groups, summary).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medattn.config.mil_schema import MilDataConfig
from medattn.data.slide_table import read_slide_table
from medattn.errors import DataError
from medattn.evaluate.mil_metrics import classification_metrics, mean_std, survival_metrics
from medattn.io.atomic import atomic_write_json, atomic_write_text

CLASSIFICATION_METRICS = ("auc", "balanced_accuracy", "f1", "accuracy")
SURVIVAL_METRICS = ("c_index",)


def write_rows_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV atomically (columns: ``columns``, else every key in first-seen order)."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def task_metrics(task: str, outputs: np.ndarray, label: np.ndarray | None = None, time: np.ndarray | None = None,
                 event: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of outputs [N, K]: class probabilities against ``label`` [N], or risk [N, 1] against
    ``time``/``event`` [N]."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if task == "classification":
        return classification_metrics(np.asarray(label), outputs)
    return survival_metrics(np.asarray(time), np.asarray(event), outputs.reshape(len(outputs), -1)[:, 0])


def summarize(rows: Sequence[dict[str, float]], metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "n"}}`` over rows (folds × seeds); std is the sample std (ddof 1)."""
    stats = mean_std([{m: float(r[m]) for m in metrics} for r in rows])
    return {m: {"mean": stats[m][0], "std": stats[m][1],
                "n": sum(1 for r in rows if math.isfinite(float(r[m])))} for m in metrics}


def format_table(summary: dict[str, dict[str, float]], rows: Sequence[dict[str, Any]] = ()) -> str:
    """A plain-text table: one line per fold × seed row (when given), then mean ± std per metric."""
    metrics = list(summary)
    lines = [f"{'fold':>4} {'seed':>4} " + " ".join(f"{m:>17}" for m in metrics)]
    if rows:
        for r in rows:
            lines.append(f"{r.get('fold', '-'):>4} {r.get('seed', '-'):>4} "
                         + " ".join(f"{float(r[m]):>17.4f}" for m in metrics))
    lines.append(f"{'mean ± std':>9} " + " ".join(
        f"{summary[m]['mean']:>8.4f} ± {summary[m]['std']:<6.4f}" for m in metrics))
    return "\n".join(lines)


def _read_predictions(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            cols = [c.strip() for c in reader.fieldnames or []]
    except FileNotFoundError:
        raise DataError("no such predictions file", path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the predictions: {e}", path) from e
    if "slide_id" not in cols:
        raise DataError(f"missing column 'slide_id' (columns: {', '.join(cols) or 'none'})", path)
    if not rows:
        raise DataError("no predictions in the file", path)
    return rows, cols


def evaluate_predictions(predictions_csv: str | Path, slides_csv: str | Path, out_dir: str | Path | None = None,
                         label_column: str = "label", time_column: str = "time",
                         event_column: str = "event") -> dict[str, Any]:
    """Score a predictions CSV (or a folder holding ``predictions.csv``) against a slide table.

    Returns ``{"task", "classes", "n_slides", "metrics" (names), "groups" (one row per fold × seed or
    one row), "summary" ({metric: {mean, std, n}})}``; writes ``metrics.csv`` and ``metrics.json``
    into ``out_dir`` when given.

    Raises:
        DataError: missing files or columns, a non-numeric output, or a predicted slide that is not in
            the slide table — naming the file and row.
    """
    pred_path = Path(predictions_csv)
    if pred_path.is_dir():
        pred_path = pred_path / "predictions.csv"
    rows, cols = _read_predictions(pred_path)
    if "risk" in cols:
        task, outputs, classes = "survival", ["risk"], []
    else:
        outputs = [c for c in cols if c.startswith("p_")]
        classes = [c[2:] for c in outputs]
        if len(outputs) < 2:
            raise DataError("no output columns: expected 'p_<class>' columns (classification) or 'risk' (survival)",
                            pred_path)
        task = "classification"
    data = MilDataConfig(label_column=label_column, time_column=time_column, event_column=event_column,
                         classes=classes)
    table = {r.slide_id: r for r in read_slide_table(slides_csv, data, task).records}
    grouped = "fold" in cols and "seed" in cols
    groups: dict[tuple[str, str], list[tuple[Any, np.ndarray]]] = {}
    for line, row in enumerate(rows, start=2):
        sid = (row.get("slide_id") or "").strip()
        if sid not in table:
            raise DataError(f"row {line}: slide {sid!r} is not in the slide table {slides_csv}", pred_path)
        try:
            values = np.array([float(row[c]) for c in outputs])
        except (TypeError, ValueError):
            raise DataError(f"row {line}: an output column ({', '.join(outputs)}) is empty or not a number",
                            pred_path) from None
        key = (row["fold"].strip(), row["seed"].strip()) if grouped else ("", "")
        groups.setdefault(key, []).append((table[sid], values))
    names = CLASSIFICATION_METRICS if task == "classification" else SURVIVAL_METRICS
    out_rows = []
    for (fold, seed), items in sorted(groups.items(), key=lambda kv: tuple(_num(x) for x in kv[0])):
        recs = [r for r, _ in items]
        values = np.stack([v for _, v in items])
        m = task_metrics(task, values, label=np.array([r.label for r in recs]) if task == "classification" else None,
                         time=np.array([r.time for r in recs], dtype=float) if task == "survival" else None,
                         event=np.array([r.event for r in recs]) if task == "survival" else None)
        out_rows.append({**({"fold": fold, "seed": seed} if grouped else {}), "n": len(items),
                         **{k: m[k] for k in names}})
    result = {"task": task, "classes": classes, "n_slides": len({r.slide_id for g in groups.values() for r, _ in g}),
              "metrics": list(names), "groups": out_rows, "summary": summarize(out_rows, names),
              "predictions": str(pred_path), "slides": str(slides_csv)}
    if out_dir is not None:
        write_rows_csv(Path(out_dir) / "metrics.csv", out_rows)
        atomic_write_json(Path(out_dir) / "metrics.json", result)
    return result


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def is_mil_predictions(path: str | Path) -> bool:
    """True for a ``.csv`` file or a folder holding ``predictions.csv`` (what ``medattn evaluate`` scores
    as MIL predictions; segmentation predictions are folders of label maps)."""
    p = Path(path)
    return (p.suffix.lower() == ".csv" and not p.is_dir()) or (p.is_dir() and (p / "predictions.csv").is_file())


def evaluate_cli(predictions: str | Path, slides_csv: str | Path, out_dir: str | Path | None = None) -> int:
    """``medattn evaluate PREDICTIONS SLIDES.csv [-o OUT]`` for MIL predictions; prints the table."""
    pred = Path(predictions)
    out = Path(out_dir) if out_dir else (pred if pred.is_dir() else pred.parent) / "evaluation"
    result = evaluate_predictions(pred, slides_csv, out)
    print(f"{result['task']}: {result['n_slides']} slides")
    print(format_table(result["summary"], result["groups"] if len(result["groups"]) > 1 else ()))
    print(f"per-group metrics: {out / 'metrics.csv'}\nsummary:           {out / 'metrics.json'}")
    return 0
