"""``medattn explain`` and ``medattn report``: explanation folders with a self-contained ``report.html``.

``medattn explain CKPT INPUT -o OUT`` dispatches on the checkpoint kind:

* MIL (``kind: "mil"``): INPUT is a slide (its bag is extracted with the checkpoint's encoder into
  ``OUT/bag/``) or an ``.h5`` bag (``--slide`` adds the thumbnail and patch crops). OUT gets the
  prediction and attention (``attention.csv``, ``heatmap.png``, ``thumbnail.png``), the counterfactual
  experiments (``counterfactuals/``), crops of the most necessary and sufficient patches, and
  ``report.html`` (see :mod:`medattn.report.slide_report`).
* segmentation: INPUT is the case's image file(s) in channel order. OUT gets ``explanation.npz``
  (gate maps, occlusion sensitivity on the preprocessed grid), ``prediction.<ext>`` on the input grid
  and ``report.html`` (see :mod:`medattn.report.case_report`).

``medattn report FOLDER`` rebuilds ``FOLDER/report.html`` from the files there (no model).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from medattn.errors import ConfigError, DataError
from medattn.io.atomic import atomic_path, atomic_write_json

BAG_SUFFIXES = (".h5", ".hdf5")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def command_line() -> str:
    """The command as the user typed it (shell-quoted)."""
    return shlex.join(["medattn", *sys.argv[1:]])


def _metrics(a: argparse.Namespace, out: Path) -> None:
    if a.metrics:
        from medattn.report.case_report import read_json

        data = read_json(Path(a.metrics))
        atomic_write_json(out / "metrics.json", data)


def _bag_for(a: argparse.Namespace, mil: Any, out: Path) -> tuple[Any, Path | None]:
    """The bag to explain and the slide it came from (None for a bag without ``--slide``)."""
    from medattn.data.bags import read_bag

    inp = Path(a.inputs[0])
    if inp.suffix.lower() in BAG_SUFFIXES:
        return read_bag(inp), Path(a.slide) if a.slide else None
    from medattn.data.features import slide_bag

    cfg = dataclasses.replace(mil.config, slide=_slide_cfg(a, mil), tissue=mil.tissue, patch=mil.patch)
    return read_bag(slide_bag(inp, cfg, out / "bag", progress=not a.no_progress)), inp


def _slide_cfg(a: argparse.Namespace, mil: Any) -> Any:
    """The checkpoint's slide section with the command line's --mpp / --magnification."""
    given = {k: v for k, v in (("mpp", a.mpp), ("magnification", a.magnification)) if v is not None}
    return dataclasses.replace(mil.slide, **given)


def explain_mil(a: argparse.Namespace, out: Path) -> Path:
    """The MIL branch of ``medattn explain`` (see the module docstring); returns the report path."""
    from medattn.engine.heatmap import render_heatmap
    from medattn.engine.mil_checkpoint import load_mil_checkpoint
    from medattn.engine.mil_infer import predict_bag
    from medattn.engine.mil_outputs import patch_size_level0, write_attention
    from medattn.explain.experiments import CounterfactualSpec, explain_bag
    from medattn.explain.plots import array_to_png, blank_canvas, read_csv_rows, read_patch_crop
    from medattn.io.slide import open_slide
    from medattn.report.html import versions
    from medattn.report.slide_report import build_slide_report, patch_effects, top_patches

    if len(a.inputs) != 1:
        raise ConfigError(f"a MIL explanation takes one slide or bag, got {len(a.inputs)} inputs")
    mil = load_mil_checkpoint(a.checkpoint, device=a.device)
    bag, slide_path = _bag_for(a, mil, out)
    pred = predict_bag(mil, bag)
    coords = np.asarray(bag.coords, np.int64)
    write_attention(out, bag, pred)
    psize0 = round(patch_size_level0(bag))
    meta: dict[str, Any] = {"thumbnail_downsample": None}
    slide_cfg = _slide_cfg(a, mil)
    slide = open_slide(slide_path, mpp=slide_cfg.mpp, magnification=slide_cfg.magnification,
                       backend=slide_cfg.backend) if slide_path else None
    try:
        if slide is not None:
            thumb, ds = slide.get_thumbnail(min(int(mil.infer.thumbnail_size), 1024))
            with atomic_path(out / "thumbnail.png") as tmp:
                tmp.write_bytes(array_to_png(thumb))
            meta["thumbnail_downsample"] = list(ds)
        else:
            thumb, ds = blank_canvas(coords, psize0)
        heat = render_heatmap(thumb, ds, coords, psize0, pred["attention"], scaling=mil.infer.heatmap_scaling,
                              colormap=mil.infer.heatmap_colormap, alpha=mil.infer.heatmap_alpha,
                              title=f"{bag.attrs.get('slide_id', '')}: {pred.get('prediction') or ''}")
        with atomic_path(out / "heatmap.png") as tmp:
            tmp.write_bytes(array_to_png(heat))
        donor = None
        if a.transplant:
            from medattn.data.bags import read_bag

            donor = read_bag(a.transplant)
        spec = CounterfactualSpec(experiments=a.experiments.split(",") if a.experiments else None,
                                  target=a.target, engine=a.engine, per_round=a.per_round,
                                  max_fraction=a.greedy_fraction, stop_on_flip=a.stop_at_flip, region=a.region,
                                  donor=donor, slide_size=tuple(slide.dimensions) if slide is not None else None)
        if a.percents:
            spec.percentages = a.percents
        if a.seeds:
            spec.random_seeds = a.seeds
        summary = explain_bag(mil, bag, out, spec)
        crops = set()
        for name, largest in (("single_removal", False), ("single_patch", True)):
            csv_path = out / "counterfactuals" / f"{name}.csv"
            if csv_path.is_file():
                crops.update(top_patches(patch_effects(read_csv_rows(csv_path)), a.top_k, largest))
        if slide is not None and crops:
            level = int(bag.attrs.get("level") or 0)
            size = int(bag.attrs.get("patch_size") or psize0)
            for i in sorted(crops):
                crop = read_patch_crop(slide, (int(coords[i, 0]), int(coords[i, 1])), level, psize0, min(size, 256))
                with atomic_path(out / "crops" / f"{i}.png") as tmp:
                    tmp.write_bytes(array_to_png(crop))
    finally:
        if slide is not None:
            slide.close()
    meta.update({
        "kind": "mil", "slide_id": str(bag.attrs.get("slide_id") or Path(a.inputs[0]).stem),
        "input": str(a.inputs[0]), "input_type": "bag" if slide_path is None or bag.path == Path(a.inputs[0])
        else "slide", "slide": str(slide_path) if slide_path else None, "checkpoint": str(a.checkpoint),
        "checkpoint_sha256": mil.sha256, "command": command_line(), "config": _plain(mil.config),
        "versions": versions(str(mil.device)), "output_names": list(mil.output_names), "classes": list(mil.classes),
        "task": mil.task, "prediction": {"outputs": [float(v) for v in pred["outputs"]],
                                         "prediction": pred.get("prediction")},
        "target": summary.target, "n_patches": len(coords), "level": bag.attrs.get("level"),
        "patch_size": bag.attrs.get("patch_size"), "patch_size_level0": psize0,
        "top_k": a.top_k, "heatmap_scaling": mil.infer.heatmap_scaling, "heatmap_colormap": mil.infer.heatmap_colormap})
    atomic_write_json(out / "explain.json", meta)
    _metrics(a, out)
    return build_slide_report(out)


def _plain(obj: Any) -> Any:
    from medattn.engine.mil_checkpoint import plain

    return plain(obj)


def explain_segmentation(a: argparse.Namespace, out: Path) -> Path:
    """The segmentation branch of ``medattn explain``; returns the report path."""
    from medattn.engine.checkpoint import load_checkpoint
    from medattn.engine.predictor import Predictor
    from medattn.explain.segmentation import explain_case, save_explanation
    from medattn.io import write_image
    from medattn.report.case_report import build_case_report
    from medattn.report.html import versions

    ckpt = load_checkpoint(a.checkpoint)
    predictor = Predictor(ckpt, device=a.device)
    target = None
    if a.target is not None:
        names = {v: k for k, v in predictor.labels.items()}
        if a.target in names:
            target = names[a.target]
        elif a.target.isdigit():
            target = int(a.target)
        else:
            raise ConfigError(f"unknown target class '{a.target}' (classes: {', '.join(names)})")
    expl = explain_case(predictor, a.inputs, target=target, occlusion=not a.no_occlusion,
                        mask_size=a.occlusion_size, overlap=a.occlusion_overlap)
    save_explanation(expl, out / "explanation.npz")
    pred = predictor.predict(a.inputs)
    ref = pred.reference
    write_image(pred.label, out / ("prediction.nii.gz" if ref.geometry.ndim == 3 else "prediction.png"),
                ref.geometry, reference=ref)
    first = Path(a.inputs[0])
    atomic_write_json(out / "explain.json", {
        "kind": "segmentation", "case": first.name.split(".")[0], "inputs": [str(p) for p in a.inputs],
        "checkpoint": str(a.checkpoint), "command": command_line(), "config": ckpt.get("config"),
        "versions": versions(str(predictor.device)), "labels": {str(k): v for k, v in predictor.labels.items()},
        "target": expl.target, "timings": expl.timings,
        "settings": {"occlusion_mask_size": a.occlusion_size, "occlusion_overlap": a.occlusion_overlap,
                     "occlusion": not a.no_occlusion}})
    _metrics(a, out)
    return build_case_report(out)


def cmd_explain(a: argparse.Namespace) -> int:
    from medattn.engine.checkpoint import checkpoint_kind, load_checkpoint

    out = Path(a.output)
    kind = checkpoint_kind(load_checkpoint(a.checkpoint))
    for p in a.inputs:
        if not Path(p).exists():
            raise DataError("no such file or folder", p)
    out.mkdir(parents=True, exist_ok=True)
    report = explain_mil(a, out) if kind == "mil" else explain_segmentation(a, out)
    print(f"report: {report}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from medattn.report import build_report

    folder = Path(a.folder)
    if not folder.is_dir():
        raise DataError("no such folder", folder)
    _metrics(a, folder)
    print(f"report: {build_report(folder)}")
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``explain`` and ``report`` to the ``medattn`` subcommands."""
    e = sub.add_parser("explain", parents=[common], help="explain a prediction (MIL counterfactuals or "
                       "segmentation gates/occlusion) into a self-contained report.html")
    e.add_argument("checkpoint", help="a MIL or segmentation checkpoint")
    e.add_argument("inputs", nargs="+", metavar="INPUT", help="MIL: a slide or .h5 bag; segmentation: the "
                   "case's image file(s) in channel order")
    e.add_argument("-o", "--output", required=True, help="output folder (gets report.html)")
    e.add_argument("--target", default=None, help="output to explain (MIL: e.g. p_tumour or risk; "
                   "segmentation: class name or index); default: the predicted class")
    e.add_argument("--metrics", default=None, help="an evaluation summary.json to show in the report")
    e.add_argument("--device", default="auto")
    e.add_argument("--no-progress", action="store_true")
    m = e.add_argument_group("MIL counterfactuals")
    m.add_argument("--experiments", default=None, help="comma-separated experiment names (default: all that "
                   "apply: single_removal, single_patch, ranked_removal, random_removal, greedy_necessity, "
                   "greedy_sufficiency, region_* with --region, transplant with --transplant)")
    m.add_argument("--percents", type=_floats, default=None, help="attention-ranked/random removal "
                   "percentages, e.g. 1,2,5,10,20,50")
    m.add_argument("--seeds", type=_ints, default=None, help="random-removal seeds, e.g. 0,1,2,3,4")
    m.add_argument("--greedy-fraction", type=float, default=0.1, help="greedy search stops after this "
                   "fraction of the bag (default 0.1)")
    m.add_argument("--per-round", type=int, default=1, help="patches removed per greedy round")
    m.add_argument("--stop-at-flip", action="store_true", help="stop greedy searches when the class flips")
    m.add_argument("--region", default=None, help="mask image or GeoJSON (level-0 px) for region_remove/keep")
    m.add_argument("--transplant", default=None, metavar="BAG", help="donor .h5 bag for the transplant experiment")
    m.add_argument("--engine", choices=("auto", "exact", "generic"), default="auto")
    m.add_argument("--slide", default=None, help="the slide of an .h5 INPUT (thumbnail and patch crops)")
    m.add_argument("--mpp", type=float, default=None, help="µm per pixel where the slide metadata lacks it")
    m.add_argument("--magnification", type=float, default=None)
    m.add_argument("--top-k", type=int, default=8, help="rows of the most necessary/sufficient tables")
    s = e.add_argument_group("segmentation")
    s.add_argument("--occlusion-size", type=int, default=16, help="occluder box side in voxels (default 16)")
    s.add_argument("--occlusion-overlap", type=float, default=0.25, help="overlap of occluder positions")
    s.add_argument("--no-occlusion", action="store_true", help="gate maps only (occlusion is the slow part)")
    e.set_defaults(func=cmd_explain)

    r = sub.add_parser("report", parents=[common], help="rebuild FOLDER/report.html from an explanation folder")
    r.add_argument("folder")
    r.add_argument("--metrics", default=None, help="an evaluation summary.json to include")
    r.set_defaults(func=cmd_report)
