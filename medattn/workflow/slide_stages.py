"""Workflow stage kinds for whole slides and explanations, and the MIL branches of train/infer/evaluate.

==============  ======================================================  ============================================
kind            inputs (required*)                                      calls
==============  ======================================================  ============================================
synth_slides    none                                                    medattn.data.wsi_synth.write_synthetic_slides
synth_bags      none                                                    medattn.data.bag_synth.planted_bags
features        slides* (folder or file), config (a MIL config)         medattn.data.features.extract_features
explain         checkpoint*, input*, region, transplant, slide,         ``medattn explain`` (MIL or segmentation)
                metrics
report          explanation*, metrics                                   medattn.report.build_report
==============  ======================================================  ============================================

``train``, ``infer`` and ``evaluate`` (in :mod:`medattn.workflow.stages`) take the MIL branch when
the config says ``pipeline: mil``, the checkpoint is a MIL checkpoint, or the predictions are a
``predictions.csv``; their MIL halves live here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from medattn.errors import DataError

__all__ = ["evaluate_mil", "infer_mil", "is_mil_run", "mil_overrides", "slide_stage_kinds", "train_mil_stage"]


def is_mil_run(config: Any) -> bool:
    """True when a loaded config is a MIL config."""
    return getattr(config, "pipeline", None) == "mil"


def mil_overrides(dataset: str) -> list[str]:
    """``--set`` overrides pointing a MIL config at a slide table (and its ``bags/`` folder if present)."""
    sets = [f"data.slides_csv={dataset}"]
    bags = Path(dataset).parent / "bags"
    if bags.is_dir():
        sets.append(f"data.bags_dir={bags}")
    return sets


def train_mil_stage(cfg: Any, resume: bool, progress: bool) -> dict[str, str]:
    """Cross-validate a MIL config (its output_dir is the stage folder)."""
    from medattn.engine.mil_trainer import train_mil

    result = train_mil(cfg, resume=resume, progress=progress)
    print(result.table())
    return {"config.yaml": "config.yaml", "summary.json": "summary.json", "metrics.csv": "metrics.csv",
            "predictions.csv": "predictions.csv"}


def infer_mil(checkpoint: Path, images: Path, out: Path, device: str, progress: bool) -> dict[str, str]:
    """Slide-level predictions, attention and heatmaps for every slide or bag under ``images``."""
    from medattn.engine.mil_infer import infer_slides

    result = infer_slides(checkpoint, [images], out, device=device, progress=progress)
    print(f"{len(result.done)} slide(s) predicted")
    if result.failed:
        name, message = result.failed[0]
        raise DataError(f"{len(result.failed)} slide(s) failed, first: {message}", name)
    return {"predictions.csv": "predictions.csv"}


def evaluate_mil(predictions: Path, references: Path, out: Path) -> dict[str, str]:
    """Slide-level metrics of ``predictions`` (a predictions.csv or a folder with one) against a slide table."""
    from medattn.evaluate.mil_evaluate import evaluate_predictions, format_table

    result = evaluate_predictions(predictions, references, out)
    print(format_table(result["summary"], ()))
    return {"metrics.json": "metrics.json", "metrics.csv": "metrics.csv"}


def _run_synth_slides(ctx: Any) -> dict[str, str]:
    from medattn.data.wsi_synth import write_synthetic_slides

    p = ctx.stage.params
    shutil.rmtree(ctx.out)  # the generator builds its folder itself
    path = write_synthetic_slides(ctx.out, n_slides=p["n_slides"], n_patients=p["n_patients"],
                                  size=(p["width"], p["height"]), mpp=p["mpp"], magnification=p["magnification"],
                                  positive_fraction=p["positive_fraction"], seed=p["seed"])
    print(f"wrote {path}")
    return {"slides.csv": "slides.csv"}


def _run_synth_bags(ctx: Any) -> dict[str, str]:
    from medattn.data.bag_synth import planted_bags, write_planted_bags

    p = ctx.stage.params
    shutil.rmtree(ctx.out)
    bags = planted_bags(n_bags=p["n_bags"], n_patches=(p["min_patches"], p["max_patches"]), dim=p["dim"],
                        positive_fraction=p["positive_fraction"], signal=p["signal"], seed=p["seed"])
    print(f"wrote {write_planted_bags(ctx.out, bags)}")
    return {"slides.csv": "slides.csv", "instances.csv": "instances.csv"}


def _run_features(ctx: Any) -> dict[str, str]:
    from medattn.config import load_mil_config
    from medattn.data.features import extract_features
    from medattn.io.slide import find_slides

    cfg = load_mil_config(ctx.inputs.get("config"), ctx.stage.overrides)
    result = extract_features(find_slides([ctx.inputs["slides"]]), ctx.out, cfg, progress=ctx.progress)
    print(f"{len(result.done)} bag(s) written, {len(result.skipped)} kept")
    if result.failed:
        name, message = result.failed[0]
        raise DataError(f"{len(result.failed)} slide(s) failed, first: {message}", name)
    return {}


def _run_explain(ctx: Any) -> dict[str, str]:
    from medattn.cli import build_parser

    p, inp = ctx.stage.params, ctx.inputs
    argv = ["explain", str(inp["checkpoint"]), str(inp["input"]), "-o", str(ctx.out), "--engine", p["engine"],
            "--greedy-fraction", str(p["greedy_fraction"]), "--per-round", str(p["per_round"]),
            "--device", p["device"]]
    for name in ("region", "transplant", "slide", "metrics"):
        if name in inp:
            argv += [f"--{name}", str(inp[name])]
    if p["experiments"]:
        argv += ["--experiments", p["experiments"]]
    if p["stop_at_flip"]:
        argv.append("--stop-at-flip")
    if not p["occlusion"]:
        argv.append("--no-occlusion")
    if not ctx.progress:
        argv.append("--no-progress")
    args = build_parser().parse_args(argv)
    args.func(args)
    return {"report.html": "report.html"}


def _run_report(ctx: Any) -> dict[str, str]:
    from medattn.report import build_report
    from medattn.report.case_report import read_json

    shutil.rmtree(ctx.out)
    shutil.copytree(ctx.inputs["explanation"], ctx.out)
    metrics = read_json(ctx.inputs["metrics"]) if "metrics" in ctx.inputs else None
    print(f"wrote {build_report(ctx.out, metrics)}")
    return {"report.html": "report.html"}


def slide_stage_kinds() -> dict[str, Any]:
    """The stage kinds of this module, by name (merged into ``STAGE_KINDS``)."""
    from medattn.workflow.stages import StageKind

    i, f, b, s = (int,), (float, int), (bool,), (str,)
    return {
        "synth_slides": StageKind("synth_slides", {}, {
            "n_slides": (i, 8), "n_patients": (i, None), "width": (i, 4096), "height": (i, 3072),
            "mpp": (f, 0.5), "magnification": (f, 20.0), "positive_fraction": (f, 0.5), "seed": (i, 0)},
            _run_synth_slides),
        "synth_bags": StageKind("synth_bags", {}, {
            "n_bags": (i, 100), "min_patches": (i, 100), "max_patches": (i, 300), "dim": (i, 32),
            "positive_fraction": (f, 0.5), "signal": (f, 1.0), "seed": (i, 0)}, _run_synth_bags),
        "features": StageKind("features", {"slides": True, "config": False}, {}, _run_features),
        "explain": StageKind("explain", {"checkpoint": True, "input": True, "region": False, "transplant": False,
                                         "slide": False, "metrics": False}, {
            "experiments": (s, None), "engine": (s, "auto"), "greedy_fraction": (f, 0.1), "per_round": (i, 1),
            "stop_at_flip": (b, False), "occlusion": (b, True), "device": (s, "auto")}, _run_explain),
        "report": StageKind("report", {"explanation": True, "metrics": False}, {}, _run_report),
    }

