"""Segmentation evaluation.

- :mod:`medattn.evaluate.metrics`: spacing-aware Dice, IoU, HD95 and NSD for one class of a mask,
  with a documented empty-mask convention, and :func:`segmentation_metrics` for label maps.
- :mod:`medattn.evaluate.segmentation`: :func:`evaluate_folders` (predictions vs references on disk,
  writes ``metrics.csv`` and ``summary.json``) and :func:`format_summary_table`.

The folder-level names are imported lazily so that ``medattn.evaluate.metrics`` (used during
training) does not pull in the image readers.
"""

from __future__ import annotations

from typing import Any

from medattn.evaluate.metrics import (
    METRICS,
    binary_metrics,
    dice,
    hd95,
    iou,
    nsd,
    segmentation_metrics,
    surface_distances,
)

__all__ = [
    "METRICS",
    "binary_metrics",
    "dice",
    "evaluate_folders",
    "format_summary_table",
    "hd95",
    "iou",
    "nsd",
    "segmentation_metrics",
    "surface_distances",
]


def __getattr__(name: str) -> Any:
    if name in ("evaluate_folders", "format_summary_table"):
        from medattn.evaluate import segmentation

        return getattr(segmentation, name)
    raise AttributeError(f"module 'medattn.evaluate' has no attribute {name!r}")
