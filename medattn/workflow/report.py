"""Run records: the software/device description in the manifest and the run's ``index.html``.

``index.html`` is one static page (no scripts, no external resources) with one row per stage:
status, why it ran or was skipped, duration, and relative links to its output folder, its log and
the files the stage declared worth linking (``dataset.json``, ``best.pt``, ``metrics.csv``, ...).
An evaluate stage's Dice table (``summary.txt``) is shown inline.
"""

from __future__ import annotations

import html
import platform
import sys
from pathlib import Path
from typing import Any

from medattn.io.atomic import atomic_write_text

__all__ = ["environment", "write_index"]

_STATUS_COLOUR = {"ran": "#1a7f37", "skipped": "#57606a", "failed": "#cf222e", "interrupted": "#bf8700",
                  "running": "#0969da", "pending": "#57606a", "not selected": "#8c959f"}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's best guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """``versions`` (python, torch, monai, numpy, platform) and ``device`` (what stages run on)."""
    import monai
    import numpy
    import torch

    cuda = torch.cuda.is_available()
    device = {"type": "cuda" if cuda else "cpu", "cpu": cpu_name(), "host": platform.node()}
    if cuda:
        device["gpu"] = torch.cuda.get_device_name(0)
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "monai": monai.__version__,
                "numpy": numpy.__version__, "platform": platform.platform()}
    return {"versions": versions, "device": device}


def _link(run_dir: Path, target: Path, label: str) -> str:
    if not target.exists():
        return f'<span class="missing">{html.escape(label)}</span>'
    rel = target.relative_to(run_dir).as_posix()
    return f'<a href="{html.escape(rel)}">{html.escape(label)}</a>'


def _stage_row(run_dir: Path, st: dict[str, Any]) -> str:
    out = run_dir / st["output"]
    links = [_link(run_dir, out, f"{st['output']}/")]
    links += [_link(run_dir, out / rel, label) for label, rel in (st.get("links") or {}).items()]
    log = run_dir / "logs" / f"{st['name']}.log"
    if log.exists():
        links.append(_link(run_dir, log, "log"))
    colour = _STATUS_COLOUR.get(st["status"], "#000")
    duration = f"{st['duration_s']:.1f} s" if isinstance(st.get("duration_s"), (int, float)) else ""
    reason = html.escape(st.get("error") or st.get("reason") or "")
    table = ""
    summary = out / "summary.txt"
    if st["kind"] == "evaluate" and summary.is_file():
        table = f'<pre>{html.escape(summary.read_text(encoding="utf-8"))}</pre>'
    return (f"<tr><td><b>{html.escape(st['name'])}</b><br><small>{html.escape(st['kind'])}</small></td>"
            f'<td style="color:{colour}">{html.escape(st["status"])}</td><td>{reason}</td><td>{duration}</td>'
            f"<td>{' · '.join(links)}{table}</td></tr>")


def write_index(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``run_dir/index.html`` for ``manifest`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    wf = manifest["workflow"]
    env = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    dev = manifest.get("device", {})
    device = dev.get("gpu") or dev.get("cpu", "")
    rows = "\n".join(_stage_row(run_dir, st) for st in manifest["stages"])
    title = f"medattn run: {wf['name']}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border-bottom:1px solid #ddd;padding:.4em .8em;
text-align:left;vertical-align:top}} table{{border-collapse:collapse}} .missing{{color:#8c959f}}
pre{{font-size:.85em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>status <b>{html.escape(manifest.get("status", ""))}</b> · started {html.escape(manifest.get("started", ""))}
· workflow <code>{html.escape(wf["path"])}</code> · <a href="manifest.json">manifest.json</a></p>
<p><small>medattn {html.escape(manifest.get("medattn_version", ""))} · {html.escape(env)} ·
device {html.escape(dev.get("type", ""))} ({html.escape(device)})</small></p>
<table><tr><th>stage</th><th>status</th><th>why</th><th>time</th><th>outputs</th></tr>
{rows}
</table></body></html>
"""
    path = run_dir / "index.html"
    atomic_write_text(path, page)
    return path
