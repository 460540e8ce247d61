"""The stage kinds a workflow can use, their parameters and inputs, and the function each one calls.

=========  ==========================================  =================================================
kind       inputs (required*)                          calls
=========  ==========================================  =================================================
synth      none                                        medattn.data.synth.write_synthetic_dataset
train      dataset*                                    medattn.engine.trainer.train (config + ``set``)
infer      checkpoint*, images*                        medattn.engine.infer.infer
evaluate   predictions*, references*, labels           medattn.evaluate.evaluate_folders
=========  ==========================================  =================================================

Every stage function writes only into ``ctx.out`` (a temporary folder that the runner renames onto the
stage's output folder on success) and returns the files worth linking from the run's ``index.html``.
The whole-slide kinds (``synth_slides``, ``synth_bags``, ``features``) and ``explain``/``report`` are in
:mod:`medattn.workflow.slide_stages`; train, infer and evaluate take their MIL branch from there when
the config, checkpoint or predictions are MIL ones.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medattn.errors import ConfigError, DataError

if TYPE_CHECKING:
    from medattn.workflow.spec import Stage

__all__ = ["STAGE_KINDS", "StageContext", "StageKind", "check_params", "fingerprint"]


@dataclass
class StageContext:
    """What a stage function gets: its stage, resolved input paths, the temporary output folder."""

    stage: Stage
    inputs: dict[str, Path]
    out: Path
    resume: bool = False  # ``out`` holds an interrupted attempt with the same cache key
    progress: bool = True


@dataclass(frozen=True)
class StageKind:
    """A stage kind: its inputs (name → required), parameters (name → (types, default)) and function."""

    name: str
    inputs: dict[str, bool]
    params: dict[str, tuple[tuple[type, ...], Any]]
    run: Callable[[StageContext], dict[str, str]]


def check_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with defaults filled in; ConfigError on an unknown name or a wrong type."""
    spec = STAGE_KINDS[kind].params
    for key, value in params.items():
        if key not in spec:
            raise ConfigError(f"{kind} has no param {key!r} (params: {', '.join(spec) or 'none'})")
        types, default = spec[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok and not (value is None and default is None):
            names = "/".join(t.__name__ for t in types)
            raise ConfigError(f"params.{key}: expected {names}, got {value!r}")
    out = {k: params.get(k, default) for k, (_, default) in spec.items()}
    for k, (types, _) in spec.items():
        if float in types and isinstance(out[k], int) and not isinstance(out[k], bool):
            out[k] = float(out[k])  # YAML `2` where a float is meant
    return out


def _train_config(stage: Stage, dataset: str, output_dir: str):
    from medattn.config import load_config
    from medattn.workflow.slide_stages import is_mil_run, mil_overrides

    data = mil_overrides(dataset) if is_mil_run(load_config(stage.config, stage.overrides)) else [
        f"data.dataset={dataset}"]
    return load_config(stage.config, [*stage.overrides, *data, f"output_dir={output_dir}"])


def fingerprint(stage: Stage) -> dict[str, Any]:
    """Everything that configures ``stage`` apart from its inputs (hashed into its cache key).

    For train stages this is the fully resolved config (file + ``set`` overrides + defaults), so
    editing the config file re-runs the stage; the input and output paths are left out.
    """
    out: dict[str, Any] = {"kind": stage.kind, "params": stage.params}
    if stage.kind == "train":
        from medattn.config import config_to_dict

        cfg = config_to_dict(_train_config(stage, "<dataset>", "<output>"))
        out["config"] = cfg
    return out


def _run_synth(ctx: StageContext) -> dict[str, str]:
    from medattn.data.synth import write_synthetic_dataset

    p = ctx.stage.params
    shutil.rmtree(ctx.out)  # write_synthetic_dataset creates its folder itself (an attempt is atomic anyway)
    path = write_synthetic_dataset(ctx.out, spatial_dims=p["spatial_dims"], n_train=p["n_train"],
                                   n_test=p["n_test"], n_organs=p["n_organs"], file_ending=p["file_ending"],
                                   seed=p["seed"], channels=p["channels"], oblique=p["oblique"])
    print(f"wrote {path}")
    return {"dataset.json": "dataset.json", "README.txt": "README.txt"}


def _run_train(ctx: StageContext) -> dict[str, str]:
    from medattn.engine.trainer import train

    cfg = _train_config(ctx.stage, str(ctx.inputs["dataset"]), str(ctx.out))
    if getattr(cfg, "pipeline", None) == "mil":
        from medattn.workflow.slide_stages import train_mil_stage

        return train_mil_stage(cfg, ctx.resume and (ctx.out / "splits.json").is_file(), ctx.progress)
    resume = ctx.resume and (ctx.out / "checkpoints" / "last.pt").is_file()
    if resume:
        print(f"resuming the interrupted training from {ctx.out / 'checkpoints' / 'last.pt'}")
    result = train(cfg, resume=resume, progress=ctx.progress)
    if result.best_metric >= 0:
        print(f"best checkpoint: epoch {result.best_epoch}, val Dice {result.best_metric:.4f}")
    links = {"config.yaml": "config.yaml", "log.csv": "log.csv", "last.pt": "checkpoints/last.pt"}
    if result.best_checkpoint is not None:
        links["best.pt"] = "checkpoints/best.pt"
    return links


def _run_infer(ctx: StageContext) -> dict[str, str]:
    from medattn.engine.infer import infer
    from medattn.engine.mil_checkpoint import is_mil_checkpoint

    p = ctx.stage.params
    if is_mil_checkpoint(ctx.inputs["checkpoint"]):
        from medattn.workflow.slide_stages import infer_mil

        return infer_mil(ctx.inputs["checkpoint"], ctx.inputs["images"], ctx.out, p["device"], ctx.progress)
    result = infer(ctx.inputs["checkpoint"], [ctx.inputs["images"]], ctx.out,
                   save_probabilities=p["save_probabilities"], overlap=p["overlap"], blend=p["blend"],
                   tta=p["tta"], sw_batch_size=p["sw_batch_size"],
                   device=p["device"], progress=ctx.progress)
    kept = f", {len(result.skipped)} kept from the interrupted attempt" if result.skipped else ""
    print(f"{len(result.done)} case(s) predicted{kept}")
    if result.failed:
        name, message = result.failed[0]
        raise DataError(f"{len(result.failed)} case(s) failed, first: {message}", name)
    return {"infer_settings.json": "infer_settings.json"}  # the folder link covers the cases


def _labels(path: Path) -> dict[int, str]:
    if path.suffix in (".pt", ".pth", ".ckpt"):
        from medattn.engine.checkpoint import labels_from_checkpoint, load_checkpoint

        return labels_from_checkpoint(load_checkpoint(path))
    from medattn.data.dataset import load_dataset

    return load_dataset(path).labels


def _run_evaluate(ctx: StageContext) -> dict[str, str]:
    from medattn.evaluate import evaluate_folders, format_summary_table
    from medattn.evaluate.mil_evaluate import is_mil_predictions
    from medattn.io.atomic import atomic_write_text

    p, inp = ctx.stage.params, ctx.inputs
    if is_mil_predictions(inp["predictions"]):
        from medattn.workflow.slide_stages import evaluate_mil

        return evaluate_mil(inp["predictions"], inp["references"], ctx.out)
    labels = _labels(inp["labels"]) if "labels" in inp else None
    summary = evaluate_folders(inp["predictions"], inp["references"], ctx.out, labels=labels,
                               nsd_tolerance=p["nsd_tolerance"], num_workers=p["workers"])
    table = format_summary_table(summary)
    atomic_write_text(ctx.out / "summary.txt", table + "\n")
    print(table)
    json.loads((ctx.out / "summary.json").read_text())  # written by evaluate_folders; fail here if it is not
    return {"summary.txt": "summary.txt", "summary.json": "summary.json", "metrics.csv": "metrics.csv"}


_INT, _FLOAT, _BOOL, _STR = (int,), (float, int), (bool,), (str,)

STAGE_KINDS: dict[str, StageKind] = {
    "synth": StageKind("synth", {}, {
        "spatial_dims": (_INT, 3), "n_train": (_INT, 8), "n_test": (_INT, 2), "n_organs": (_INT, 2),
        "channels": (_INT, 1), "file_ending": (_STR, None), "seed": (_INT, 0), "oblique": (_BOOL, True)},
        _run_synth),
    "train": StageKind("train", {"dataset": True}, {}, _run_train),
    "infer": StageKind("infer", {"checkpoint": True, "images": True}, {
        "overlap": (_FLOAT, None), "blend": (_STR, None), "tta": (_BOOL, None), "sw_batch_size": (_INT, None),
        "save_probabilities": (_BOOL, None), "device": (_STR, "auto")}, _run_infer),
    "evaluate": StageKind("evaluate", {"predictions": True, "references": True, "labels": False}, {
        "nsd_tolerance": (_FLOAT, 1.0), "workers": (_INT, 0)}, _run_evaluate),
}


def _add_slide_kinds() -> None:
    from medattn.workflow.slide_stages import slide_stage_kinds

    STAGE_KINDS.update(slide_stage_kinds())


_add_slide_kinds()
