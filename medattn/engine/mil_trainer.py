"""``medattn train`` for MIL configs: patient-level k-fold cross-validation of a bag model.

Run folder (``cfg.run_dir``)::

    config.yaml                      the resolved config
    splits.json                      per fold the slide ids of train / val / test
    bags/<slide_id>.h5               feature bags extracted from the slides (unless data.bags_dir is set)
    fold_<k>/seed_<s>/best.pt        MIL checkpoint at the best validation score (AUC or C-index)
    fold_<k>/seed_<s>/last.pt        full training state after the latest epoch (for --resume)
    fold_<k>/seed_<s>/log.csv        one row per epoch
    fold_<k>/seed_<s>/result.json    the job's held-out metrics (the job is done)
    predictions.csv                  out-of-fold: slide_id, fold, seed, prediction, p_<class>... | risk
    metrics.csv                      one row per fold × seed: auc, balanced_accuracy, f1, accuracy | c_index
    summary.json                     mean ± std of every metric over folds and seeds

Bags are read once into memory (float32) and shared by every fold and seed. Slides whose bag is
missing are first turned into bags by the configured encoder (sharded over the processes of a
distributed run). ``--resume`` skips finished jobs and continues an interrupted one from its
``last.pt`` exactly. Under ``torchrun`` every job is trained data-parallel (see
:mod:`medattn.engine.mil_epoch`); rank 0 writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medattn.config import MilConfig, save_config
from medattn.data.bag_dataset import BagDataset, load_bag_features
from medattn.data.slide_table import SlideTable, locate_inputs, read_slide_table
from medattn.data.splits import FoldSplit, cross_validation_splits, load_splits, save_splits
from medattn.engine.distributed import DistContext, barrier, communication_errors, distributed_context, shard
from medattn.engine.mil_epoch import FoldJob, MilObjective, predict_logits, train_fold
from medattn.engine.mil_losses import class_weights, survival_bin_edges, time_to_bin
from medattn.errors import ConfigError, DataError, TrainingError
from medattn.evaluate.mil_evaluate import (
    CLASSIFICATION_METRICS,
    SURVIVAL_METRICS,
    format_table,
    summarize,
    task_metrics,
    write_rows_csv,
)
from medattn.io.atomic import atomic_write_json
from medattn.models import validate_model_kwargs
from medattn.models.mil_heads import n_outputs_for, output_names, outputs_from_logits


@dataclass
class MilTrainResult:
    """What a cross-validated MIL run produced (identical on every rank)."""

    run_dir: Path
    predictions_csv: Path
    metrics_csv: Path
    summary_json: Path
    metrics: list[dict[str, Any]]  #: one row per fold × seed
    summary: dict[str, dict[str, float]]  #: {metric: {mean, std, n}}
    checkpoints: dict[str, Path] = field(default_factory=dict)  #: "fold_<k>/seed_<s>" → best.pt

    def table(self) -> str:
        """Per fold × seed metrics and mean ± std, as printed by ``medattn train``."""
        return format_table(self.summary, self.metrics)


def train_mil(cfg: MilConfig, resume: bool = False, progress: bool = True) -> MilTrainResult:
    """Cross-validate ``cfg.model`` on the slides of ``cfg.data.slides_csv``; see the module docstring.

    Args:
        resume: continue the run in ``cfg.run_dir`` (finished fold × seed jobs are kept).
        progress: progress bars (rank 0 only).

    Raises:
        DataError, ConfigError: bad slide table, missing bag/slide, bad settings (one line).
        TrainingError: a run already exists (without ``resume``), a non-finite loss, or a dead peer.
    """
    with distributed_context(cfg.train.device, cfg.train.dist_timeout_s) as ctx:
        return _train_mil(cfg, ctx, resume, progress and ctx.is_main)


def _prepare_bags(cfg: MilConfig, table: SlideTable, run_dir: Path, ctx: DistContext, progress: bool) -> list[Path]:
    bags_dir = Path(cfg.data.bags_dir) if cfg.data.bags_dir else run_dir / "bags"
    barrier(ctx)  # every rank lists the missing bags before any rank writes one
    bags, to_extract = locate_inputs(table, bags_dir, cfg.data.slides_dir)
    if to_extract:
        from medattn.data.features import extract_features

        result = extract_features(shard(to_extract, ctx.rank, ctx.world_size), bags_dir, cfg, progress=progress)
        barrier(ctx)
        if result.failed:
            name, message = result.failed[0]
            raise DataError(f"feature extraction failed for {len(result.failed)} slide(s); first: {message}", name)
        missing = [b for b in bags if not b.is_file()]
        if missing:
            raise DataError("no bag after feature extraction (another process failed on it)", missing[0])
    return bags


def _check_patch_settings(cfg: MilConfig, attrs: list[dict[str, Any]], bags: list[Path]) -> None:
    """The checkpoint stores ``cfg.patch`` and inference re-extracts slides with it, so bags made with
    another patch size or magnification would train a model that is later fed different patches."""
    for a, path in zip(attrs, bags):
        size, mag = a.get("patch_size"), a.get("magnification")
        if a.get("layout", "medattn") != "medattn" or size is None or mag is None:
            continue  # CLAM/TRIDENT bags: their settings are the user's to match
        if int(size) != cfg.patch.size or abs(float(mag) - cfg.patch.magnification) > 1e-6:
            raise ConfigError(f"patch: the bag was extracted with {int(size)} px patches at {float(mag):g}x, the "
                              f"config says {cfg.patch.size} px at {cfg.patch.magnification:g}x; set patch.size and "
                              "patch.magnification to match (inference re-extracts slides with the config's)", path)


def _task(cfg: MilConfig, table: SlideTable, n_classes: int) -> tuple[str, int]:
    t = cfg.task
    if t.type == "survival" and t.survival_loss == "cox" and cfg.train.batch_size < 2:
        raise ConfigError("train.batch_size: the Cox loss compares the bags of a step; use >= 2 (e.g. 16)")
    return t.type, n_outputs_for(t.type, n_classes, t.survival_loss, t.n_bins)


def _model_kwargs(cfg: MilConfig, in_dim: int, n_out: int) -> dict[str, Any]:
    kwargs = dict(cfg.model.kwargs)
    for k, v in {"in_dim": in_dim, "n_outputs": n_out}.items():
        if k in kwargs and kwargs[k] != v:
            raise ConfigError(f"model.kwargs.{k}: {kwargs[k]} conflicts with the bags and task ({v})")
        kwargs[k] = v
    return validate_model_kwargs(cfg.model.name, kwargs)


def _splits(cfg: MilConfig, table: SlideTable, run_dir: Path, resume: bool, ctx: DistContext) -> list[FoldSplit]:
    path = run_dir / "splits.json"
    if resume and path.exists():
        folds = load_splits(path, table.slide_ids)
        if len(folds) != cfg.train.folds:
            raise ConfigError(f"train.folds: {cfg.train.folds}, but the run being resumed has {len(folds)} folds",
                              path)
        return folds
    folds = cross_validation_splits(table.patient_ids, table.strata(), cfg.train.folds, cfg.train.val_fraction,
                                    cfg.seed)
    if ctx.is_main:
        save_splits(path, folds, table.slide_ids, cfg.seed)
    return folds


def _train_mil(cfg: MilConfig, ctx: DistContext, resume: bool, progress: bool) -> MilTrainResult:
    if not cfg.data.slides_csv:
        raise ConfigError("data.slides_csv: not set (the CSV of slide_id, patient_id, label or time/event)")
    run_dir = Path(cfg.run_dir)
    if not resume and (run_dir / "splits.json").exists():
        raise TrainingError("a run already exists here; use --resume to continue it, or choose another output_dir",
                            run_dir)
    barrier(ctx)  # every rank has looked before rank 0 writes
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    table = read_slide_table(cfg.data.slides_csv, cfg.data, cfg.task.type)
    bags = _prepare_bags(cfg, table, run_dir, ctx, progress)
    features, attrs = load_bag_features([str(b) for b in bags], progress)
    _check_patch_settings(cfg, attrs, bags)
    task_type, n_out = _task(cfg, table, len(table.classes))
    kwargs = _model_kwargs(cfg, int(features[0].shape[1]), n_out)
    folds = _splits(cfg, table, run_dir, resume, ctx)
    barrier(ctx)
    first = attrs[0]
    encoder = {"name": first.get("encoder") or cfg.encoder.name, "version": first.get("encoder_version") or "",
               "dim": int(features[0].shape[1])}
    names = output_names(task_type, table.classes)
    metric_names = CLASSIFICATION_METRICS if task_type == "classification" else SURVIVAL_METRICS
    labels = np.array([r.label if r.label is not None else 0 for r in table.records])
    times = np.array([r.time or 0.0 for r in table.records], dtype=np.float64)
    events = np.array([r.event or 0 for r in table.records], dtype=np.int64)
    predictions, metrics, checkpoints = [], [], {}
    with communication_errors(ctx):
        for split in folds:
            task = {"type": task_type, "survival_loss": cfg.task.survival_loss, "n_bins": cfg.task.n_bins,
                    "classes": table.classes, "bin_edges": None}
            targets: dict[str, Any] = {"label": labels, "time": times, "event": events}
            if task_type == "survival" and cfg.task.survival_loss == "nll":
                edges = survival_bin_edges(times[split.train], events[split.train], cfg.task.n_bins)
                task["bin_edges"] = edges.tolist()
                targets["bin"] = time_to_bin(times, edges)
            weights = class_weights(labels[split.train], len(table.classes)) \
                if task_type == "classification" and cfg.train.class_weighting else None
            objective = MilObjective(task_type, cfg.task.survival_loss, weights, cfg.train.aem_lambda,
                                     cfg.train.aem_normalize)
            test = BagDataset(features, targets, split.test)
            for seed in cfg.train.seeds:
                folder = run_dir / f"fold_{split.fold}" / f"seed_{seed}"
                job = FoldJob(split.fold, seed, folder,
                              BagDataset(features, targets, split.train, cfg.train.max_patches, seed),
                              BagDataset(features, targets, split.val), kwargs, objective,
                              lambda logits, ds, t=task_type: _score(t, cfg, logits, ds), task, encoder)
                rows, m = _run_job(cfg, job, test, table, names, ctx, progress)
                predictions += rows
                metrics.append(m)
                checkpoints[f"fold_{split.fold}/seed_{seed}"] = folder / "best.pt"
    summary = summarize(metrics, metric_names)
    result = MilTrainResult(run_dir, run_dir / "predictions.csv", run_dir / "metrics.csv", run_dir / "summary.json",
                            metrics, summary, checkpoints)
    if ctx.is_main:
        write_rows_csv(result.predictions_csv, predictions, ["slide_id", "fold", "seed", "prediction", *names])
        write_rows_csv(result.metrics_csv, metrics, ["fold", "seed", "n", *metric_names])
        atomic_write_json(result.summary_json, {
            "task": task_type, "classes": table.classes, "folds": cfg.train.folds, "seeds": list(cfg.train.seeds),
            "n_slides": len(table.records), "n_patients": len(set(table.patient_ids)), "summary": summary,
            "per_fold": metrics})
    barrier(ctx)
    return result


def _score(task: str, cfg: MilConfig, logits: torch.Tensor, ds: BagDataset) -> float:
    """Validation score: AUC (classification) or C-index (survival)."""
    out = outputs_from_logits(logits, task, cfg.task.survival_loss).numpy()
    t = {k: ds.targets[k][ds.indices] for k in ("label", "time", "event")}
    m = task_metrics(task, out, t["label"], t["time"], t["event"])
    return float(m["auc"] if task == "classification" else m["c_index"])


def _run_job(cfg: MilConfig, job: FoldJob, test: BagDataset, table: SlideTable, names: list[str], ctx: DistContext,
             progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train (unless done) and predict the held-out fold: ``(prediction rows, metrics row)``."""
    done = job.folder / "result.json"
    if done.exists():
        saved = json.loads(done.read_text())
        return saved["predictions"], saved["metrics"]
    net = train_fold(cfg, job, ctx, progress)
    out = outputs_from_logits(predict_logits(net, test, ctx, cfg.train.batch_size), job.task["type"],
                              cfg.task.survival_loss).numpy().astype(np.float64)
    recs = [table.records[i] for i in test.indices]
    rows = []
    for r, o in zip(recs, out):
        pred = table.classes[int(np.argmax(o))] if job.task["type"] == "classification" else ""
        rows.append({"slide_id": r.slide_id, "fold": job.fold, "seed": job.seed, "prediction": pred,
                     **{n: float(v) for n, v in zip(names, o)}})
    t = {k: test.targets[k][test.indices] for k in ("label", "time", "event")}
    m = task_metrics(job.task["type"], out, t["label"], t["time"], t["event"])
    metrics = {"fold": job.fold, "seed": job.seed, "n": len(recs), **m}
    if ctx.is_main:
        atomic_write_json(done, {"metrics": metrics, "predictions": rows})
    return rows, metrics


def train_mil_cli(cfg: MilConfig, resume: bool = False, progress: bool = True) -> int:
    """``medattn train`` for a MIL config: train, then (rank 0) print the table and the output files."""
    from medattn.engine.distributed import env_ranks

    result = train_mil(cfg, resume=resume, progress=progress)
    if env_ranks()[0] != 0:
        return 0  # under torchrun, rank 0 reports
    print(result.table())
    print(f"run folder:  {result.run_dir}\npredictions: {result.predictions_csv}\nmetrics:     {result.metrics_csv}\n"
          f"summary:     {result.summary_json}")
    return 0
