"""Figures for counterfactual explanations of a bag model, as PNG bytes (matplotlib, Agg backend).

They read the counterfactual CSVs of :mod:`medattn.explain` (columns ``experiment, round,
patch_index, x, y, <one column per output>, delta`` and ``seed`` for ``random_removal``; round 0 is
the baseline row with ``patch_index`` -1), so a report can be rebuilt from the files alone:

* :func:`removal_curves_png`: the target output against the number (or percentage) of patches
  removed: attention-ranked removal, random removal (mean ± standard deviation over seeds) and the
  greedy necessity search on the same axes;
* :func:`effect_scatter_png`: attention score against single-patch effect;
* :func:`effect_heatmap_png`: single-patch effects painted over the slide thumbnail;
* :func:`read_patch_crop`: a patch read from the slide at the bag's level and patch size.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from medattn.engine.heatmap import blank_canvas
from medattn.errors import DataError

if TYPE_CHECKING:
    from medattn.io.slide import Slide

__all__ = ["CURVE_EXPERIMENTS", "array_to_png", "blank_canvas", "effect_heatmap_png", "effect_scatter_png",
           "figure_to_png", "read_csv_rows", "read_patch_crop", "removal_curve", "removal_curves_png"]

#: experiments drawn as removal curves, with their label and line style
CURVE_EXPERIMENTS = {"ranked_removal": ("attention-ranked removal", "tab:blue"),
                     "random_removal": ("random removal (mean ± sd over seeds)", "tab:gray"),
                     "greedy_necessity": ("greedy necessity search", "tab:red")}


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts (DataError naming the file when it is missing or unreadable)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV: {e}", path) from e


def _float(row: dict[str, str], key: str, where: str) -> float:
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"column '{key}' missing or not a number (row {row})", where) from None


def removal_curve(rows: list[dict[str, str]], output: str, where: str = "counterfactual CSV",
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Removal curves of one experiment's rows, one per seed (key ``""`` when there is no ``seed``).

    The number of patches removed after round r is the number of distinct ``patch_index`` >= 0 listed
    in rounds 1..r (or the ``n_removed`` column, when the CSV has one); the output after round r is the
    ``output`` column of the round's last row. Returns ``{seed: (n_removed [R+1], values [R+1])}``.
    """
    by_seed: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_seed[row.get("seed") or ""].append(row)
    curves = {}
    for seed, seed_rows in by_seed.items():
        seed_rows.sort(key=lambda r: int(float(r["round"])))
        removed: set[int] = set()
        per_round: dict[int, tuple[float, float]] = {}
        for row in seed_rows:
            rnd = int(float(row["round"]))
            idx = int(float(row["patch_index"]))
            if idx >= 0 and rnd > 0:
                removed.add(idx)
            n = _float(row, "n_removed", where) if row.get("n_removed") not in (None, "") else len(removed)
            per_round[rnd] = (float(n), _float(row, output, where))
        rounds = sorted(per_round)
        curves[seed] = (np.array([per_round[r][0] for r in rounds]), np.array([per_round[r][1] for r in rounds]))
    return curves


def figure_to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def array_to_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``[H, W, 3]`` (or ``[H, W]``) uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def removal_curves_png(tables: dict[str, list[dict[str, str]]], output: str, n_patches: int,
                       percent: bool = True, threshold: float | None = None) -> bytes:
    """Output against patches removed for the experiments of :data:`CURVE_EXPERIMENTS` present in ``tables``.

    Args:
        tables: ``{experiment: rows}`` as read by :func:`read_csv_rows`.
        output: the output column to draw (the target output).
        n_patches: the bag size N (for the percentage axis).
        percent: x axis in % of the bag rather than a count.
        threshold: a horizontal line, e.g. 0.5 for a probability (None: none).
    """
    scale = 100.0 / max(n_patches, 1) if percent else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = 0
    for name, (label, colour) in CURVE_EXPERIMENTS.items():
        if not tables.get(name):
            continue
        curves = removal_curve(tables[name], output, name)
        if name == "random_removal" and len(curves) > 1:
            grid = np.unique(np.concatenate([x for x, _ in curves.values()]))
            ys = np.stack([np.interp(grid, x, y) for x, y in curves.values()])
            mean, sd = ys.mean(0), ys.std(0)
            ax.plot(grid * scale, mean, color=colour, label=label)
            ax.fill_between(grid * scale, mean - sd, mean + sd, color=colour, alpha=0.25, linewidth=0)
        else:
            for x, y in curves.values():
                ax.plot(x * scale, y, color=colour, label=label, marker="o" if len(x) < 30 else None, markersize=3)
                label = None
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise DataError(f"no removal experiment among {', '.join(sorted(tables)) or 'none'}", "counterfactuals")
    lo, hi = ax.get_ylim()
    if threshold is not None and lo - 0.1 <= threshold <= hi + 0.1:  # only where it does not squash the curves
        ax.axhline(threshold, color="black", linestyle=":", linewidth=1, label=f"{output} = {threshold:g}")
    ax.set_xlabel("patches removed (%)" if percent else "patches removed")
    ax.set_ylabel(output)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{output} as patches are removed (bag of {n_patches})", fontsize=10)
    return figure_to_png(fig)


def effect_scatter_png(attention: np.ndarray, effect: np.ndarray, output: str,
                       highlight: np.ndarray | None = None) -> bytes:
    """Attention score ``[N]`` against single-patch effect ``[N]`` (change of ``output`` on removal).

    ``highlight`` ``[N]`` bool marks patches drawn in red (e.g. the most necessary ones).
    """
    attention, effect = np.asarray(attention, float), np.asarray(effect, float)
    if attention.shape != effect.shape:
        raise DataError(f"attention {attention.shape} and effects {effect.shape} differ in length", "counterfactuals")
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.scatter(attention, effect, s=10, alpha=0.6, color="tab:blue", label="patch")
    if highlight is not None and np.any(highlight):
        ax.scatter(attention[highlight], effect[highlight], s=22, color="tab:red", label="most necessary")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("attention score (raw)")
    ax.set_ylabel(f"Δ {output} when the patch is removed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if len(attention) > 2 and np.std(attention) > 0 and np.std(effect) > 0:
        r = float(np.corrcoef(attention, effect)[0, 1])
        ax.set_title(f"attention vs effect (Pearson r = {r:.2f})", fontsize=10)
    return figure_to_png(fig)


def effect_heatmap_png(thumbnail: np.ndarray | None, downsample: tuple[float, float] | None, coords: np.ndarray,
                       patch_size_level0: int, effects: np.ndarray, title: str | None = None) -> bytes:
    """Single-patch effects ``[N]`` over the thumbnail ``[h, w, 3]`` (a white canvas when None).

    Patches are coloured by min–max scaled effect (``coolwarm``: blue = removing the patch lowers the
    output most, i.e. the most necessary patches), drawn with :func:`medattn.engine.heatmap.render_heatmap`.
    """
    from medattn.engine.heatmap import render_heatmap

    if thumbnail is None or downsample is None:
        thumbnail, downsample = blank_canvas(coords, patch_size_level0)
    image = render_heatmap(thumbnail, downsample, np.asarray(coords), int(patch_size_level0),
                           np.asarray(effects, float), scaling="minmax", colormap="coolwarm", alpha=0.6, title=title)
    return array_to_png(image)


def read_patch_crop(slide: Slide, xy: tuple[int, int], level: int, patch_size_level0: int,
                    out_size: int) -> np.ndarray:
    """The patch at level-0 top-left ``xy``, read at ``level`` and resized to ``[out_size, out_size, 3]``."""
    read = max(round(patch_size_level0 / float(slide.level_downsamples[level])), 1)
    region = slide.read_region((int(xy[0]), int(xy[1])), int(level), (read, read))
    if region.shape[:2] != (out_size, out_size):
        region = np.asarray(Image.fromarray(region).resize((out_size, out_size), Image.BILINEAR))
    return region
