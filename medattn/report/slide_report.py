"""The HTML report of a whole-slide (MIL) explanation, built from the files of its folder only.

``medattn explain`` (MIL checkpoint) writes into the slide folder:

- ``explain.json``: ``kind: "mil"``, slide id, input, checkpoint, the exact command, config, versions,
  output names, the prediction, the target output, bag geometry (``n_patches``, ``level``,
  ``patch_size``, ``patch_size_level0``), ``thumbnail_downsample`` (level-0 px per thumbnail px);
- ``attention.csv`` (``patch_index, x, y, attention, attention_weight``);
- ``thumbnail.png`` (slides only; bags are drawn on a white canvas), ``crops/<patch_index>.png``;
- ``counterfactuals/<experiment>.csv`` and ``counterfactuals/summary.json`` (:mod:`medattn.explain`);
- ``metrics.json`` (optional): an evaluation summary to show.

:func:`build_slide_report` regenerates every figure from those files (no model): the attention
heatmap, removal curves, attention-vs-effect scatter and single-patch effect heatmap, and writes
``report.html`` with tables of the experiments and of the most necessary and sufficient patches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medattn.errors import DataError
from medattn.explain.plots import (
    CURVE_EXPERIMENTS,
    array_to_png,
    effect_heatmap_png,
    effect_scatter_png,
    read_csv_rows,
    removal_curves_png,
)
from medattn.report.case_report import read_json
from medattn.report.html import HtmlReport, flatten

__all__ = ["build_slide_report", "patch_effects", "top_patches"]


def patch_effects(rows: list[dict[str, str]], column: str = "delta") -> dict[int, float]:
    """``{patch_index: value}`` of the non-baseline rows of a single-patch experiment."""
    out = {}
    for r in rows:
        idx = int(float(r["patch_index"]))
        if idx >= 0 and int(float(r["round"])) > 0:
            out[idx] = float(r[column])
    return out


def top_patches(effects: dict[int, float], k: int, largest: bool) -> list[int]:
    """The ``k`` patch indices with the largest (or smallest) value, ties broken by index."""
    return sorted(effects, key=lambda i: ((-effects[i]) if largest else effects[i], i))[:k]


def _load_png(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _thumbnail(folder: Path, meta: dict[str, Any]) -> tuple[np.ndarray | None, tuple[float, float] | None]:
    path = folder / "thumbnail.png"
    if not path.is_file() or not meta.get("thumbnail_downsample"):
        return None, None
    try:
        thumb = np.asarray(Image.open(path).convert("RGB"))
    except OSError as e:
        raise DataError(f"cannot read the thumbnail: {e}", path) from e
    sx, sy = meta["thumbnail_downsample"]
    return thumb, (float(sx), float(sy))


def _attention(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """patch indices [N], coords [N, 2], raw attention [N] from attention.csv."""
    rows = read_csv_rows(folder / "attention.csv")
    try:
        idx = np.array([int(r["patch_index"]) for r in rows], np.int64)
        coords = np.array([[int(float(r["x"])), int(float(r["y"]))] for r in rows], np.int64).reshape(-1, 2)
        att = np.array([float(r["attention"]) for r in rows], np.float64)
    except (KeyError, ValueError) as e:
        raise DataError(f"bad attention table: {e}", folder / "attention.csv") from e
    return idx, coords, att


def _patch_table(ids: list[int], folder: Path, coords: np.ndarray, att: np.ndarray,
                 values: dict[str, dict[int, float]]) -> list[list[Any]]:
    rows = []
    for rank, i in enumerate(ids, 1):
        crop = _load_png(folder / "crops" / f"{i}.png") or ""
        x, y = (int(coords[i, 0]), int(coords[i, 1])) if i < len(coords) else ("?", "?")
        rows.append([rank, i, x, y, float(att[i]) if i < len(att) else "?",
                     *[v.get(i, "") for v in values.values()], crop])
    return rows


def build_slide_report(folder: str | Path, metrics: dict[str, Any] | None = None, top_k: int | None = None) -> Path:
    """Write ``folder/report.html`` from the files of a MIL explanation folder; returns its path.

    Args:
        metrics: an evaluation summary to show (default: ``folder/metrics.json`` when present).
        top_k: rows of the most-necessary and most-sufficient patch tables (default: ``explain.json``'s
            ``top_k``, else 8).

    Raises:
        DataError: the folder lacks ``explain.json`` / ``attention.csv`` or a file is corrupt (naming it).
    """
    folder = Path(folder)
    meta = read_json(folder / "explain.json") or {}
    if meta.get("kind") != "mil":
        raise DataError(f"kind is {meta.get('kind')!r}, not 'mil'", folder / "explain.json")
    top_k = int(top_k if top_k is not None else meta.get("top_k") or 8)
    cf_dir = folder / "counterfactuals"
    summary = read_json(cf_dir / "summary.json", required=False) or {}
    names = [str(n) for n in meta.get("output_names", [])]
    target = str(summary.get("target_output") or summary.get("target") or meta.get("target") or names[-1])
    pred = meta.get("prediction", {})
    idx, coords, att = _attention(folder)
    psize0 = int(meta.get("patch_size_level0") or 256)
    thumb, ds = _thumbnail(folder, meta)
    page = HtmlReport(f"Slide explanation: {meta.get('slide_id', folder.name)}",
                      subtitle=f"checkpoint {meta.get('checkpoint', '?')} · {len(idx)} patches · target output "
                               f"{target}")

    outputs = list(zip(names, pred.get("outputs", [])))
    frags = [page.paragraph(f"Input: {meta.get('input', '?')} ({meta.get('input_type', '?')}). "
                            f"Prediction: {pred.get('prediction') if pred.get('prediction') is not None else '—'}."),
             page.table(["output", "value"], [[n, float(v)] for n, v in outputs], table_id="outputs")]
    if thumb is not None:
        frags.insert(1, page.figure(array_to_png(thumb), "fig-thumbnail", "slide thumbnail"))
    page.section("Input and prediction", *frags, section_id="prediction")

    from medattn.engine.heatmap import render_heatmap
    from medattn.explain.plots import blank_canvas

    base, base_ds = (thumb, ds) if thumb is not None else blank_canvas(coords, psize0)
    heat = render_heatmap(base, base_ds, coords, psize0, att, scaling=meta.get("heatmap_scaling", "rank"),
                          colormap=meta.get("heatmap_colormap", "jet"), title="attention")
    page.section("Attention heatmap", page.figure(array_to_png(heat), "fig-attention", "attention heatmap",
                                                  "Raw attention scores, percentile-rank scaled for display."),
                 section_id="attention")

    tables = {p.stem: read_csv_rows(p) for p in sorted(cf_dir.glob("*.csv"))} if cf_dir.is_dir() else {}
    figs = []
    if any(tables.get(name) for name in CURVE_EXPERIMENTS):
        figs.append(page.figure(removal_curves_png(tables, target, len(idx), threshold=0.5 if target.startswith(
            "p_") else None), "fig-curves", "output against patches removed",
            "Target output as patches are removed: attention-ranked, random (mean ± sd) and greedy."))
    removal = patch_effects(tables.get("single_removal", []))
    sufficiency = patch_effects(tables.get("single_patch", []))
    if removal:
        eff = np.array([removal.get(int(i), np.nan) for i in idx])
        ok = np.isfinite(eff)
        necessary = set(top_patches(removal, top_k, largest=False))
        figs.append(page.figure(effect_scatter_png(att[ok], eff[ok], target,
                                                   np.array([int(i) in necessary for i in idx[ok]])),
                                "fig-scatter", "attention against single-patch effect"))
        figs.append(page.figure(effect_heatmap_png(thumb, ds, coords[ok], psize0, eff[ok],
                                                   title=f"change of {target} when each patch is removed"),
                                "fig-effects", "single-patch effect heatmap"))
    if figs:
        page.section("Counterfactuals", *figs, section_id="counterfactuals")
    info = summary.get("experiments") or {}
    exp_rows = []
    for name, rows in tables.items():
        last = rows[-1] if rows else {}
        flip = (info.get(name) or {}).get("flip_round")
        exp_rows.append([name, (info.get(name) or {}).get("acts_on", ""), len(rows), last.get(target, ""),
                         last.get("delta", ""), "" if flip is None else flip])
    if exp_rows:
        page.section("Experiments", page.table(["experiment", "acts on", "rows", f"last {target}", "last delta",
                                                "flip round"],
                                               exp_rows, table_id="experiments"),
                     page.paragraph(f"Engine: {summary.get('engine', '?')}."), section_id="experiments")
    if removal:
        ids = top_patches(removal, top_k, largest=False)
        page.section("Most necessary patches",
                     page.paragraph(f"Removing the patch alone lowers {target} the most."),
                     page.table(["rank", "patch", "x", "y", "attention", "Δ removed", "Δ alone", "crop"],
                                _patch_table(ids, folder, coords, att, {"r": removal, "s": sufficiency}),
                                table_id="necessary"), section_id="necessary")
    if sufficiency:
        ids = top_patches(sufficiency, top_k, largest=True)
        page.section("Most sufficient patches",
                     page.paragraph(f"A bag of this patch alone gives the highest {target}."),
                     page.table(["rank", "patch", "x", "y", "attention", "Δ alone", "Δ removed", "crop"],
                                _patch_table(ids, folder, coords, att, {"s": sufficiency, "r": removal}),
                                table_id="sufficient"), section_id="sufficient")
    metrics = metrics if metrics is not None else read_json(folder / "metrics.json", required=False)
    if metrics:
        page.section("Metrics", page.key_values(flatten(metrics), "metrics"), section_id="metrics")
    page.provenance(meta.get("command"), meta.get("config"), meta.get("versions"))
    return page.write(folder / "report.html")

