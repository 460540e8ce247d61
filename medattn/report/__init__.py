"""Self-contained HTML reports: the builder (:mod:`.html`), slide (MIL) and segmentation case reports.

:func:`build_report` rebuilds ``FOLDER/report.html`` from the files an explanation wrote there
(``explain.json`` says which kind), without loading a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medattn.report.case_report import build_case_report, read_json
from medattn.report.html import HtmlReport
from medattn.report.slide_report import build_slide_report

__all__ = ["HtmlReport", "build_case_report", "build_report", "build_slide_report"]


def build_report(folder: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Rebuild ``folder/report.html`` (MIL slide or segmentation case, by ``explain.json``'s ``kind``)."""
    meta = read_json(Path(folder) / "explain.json") or {}
    if meta.get("kind") == "segmentation":
        return build_case_report(folder, metrics)
    return build_slide_report(folder, metrics)
