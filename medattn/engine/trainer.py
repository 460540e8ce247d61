"""``medattn train``: the training loop.

Run folder layout (``cfg.run_dir``)::

    config.yaml            the resolved config
    splits.json            training / validation case names and the target spacing
    log.csv                one row per epoch (rewritten atomically)
    checkpoints/last.pt    full state after the latest epoch
    checkpoints/best.pt    full state at the best validation Dice
    tensorboard/           event files, when tensorboard is installed

Checkpoints are written only after a finished epoch whose losses were all finite, so an interrupted
or diverged run always keeps its last good state, and ``--resume`` continues it exactly.

Several processes (``torchrun --nproc_per_node N -m medattn train CONFIG``): each process trains on
a disjoint shard of every epoch's cases, DDP averages the gradients, the logged losses and the
validation Dice are averaged over all processes, and only rank 0 writes files or draws progress
bars. The global batch is ``batch_size × processes × grad_accumulation``. Checkpoints hold the
plain (un-wrapped) model, so a run can be resumed with any number of processes.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medattn.config import Config, config_to_dict, save_config
from medattn.data.dataset import DatasetSpec, load_dataset, split_cases
from medattn.data.loader import build_datasets, median_spacing, train_loader
from medattn.data.transforms import resolve_orientation
from medattn.engine.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from medattn.engine.distributed import (
    DistContext,
    barrier,
    communication_errors,
    device_for,
    distributed_context,
    shard,
    unwrap,
    wrap_model,
)
from medattn.engine.losses import DeepSupervisionLoss, DiceCELoss
from medattn.engine.schedule import make_scheduler
from medattn.engine.step import Stepper
from medattn.engine.validation import validate
from medattn.errors import ConfigError, DataError, TrainingError
from medattn.io import read_image
from medattn.io.atomic import atomic_write_json, atomic_write_text
from medattn.models import create_model, validate_model_kwargs


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_metric: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when available, else CPU (one process; see :func:`medattn.engine.distributed.device_for`)."""
    return device_for(name)


def amp_dtype_for(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 (or fp16 where bf16 is unsupported) on CUDA, none on CPU or when off."""
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def model_kwargs_for(cfg: Config, spatial_dims: int, in_channels: int, out_channels: int) -> dict[str, Any]:
    """The config's model kwargs plus the values the dataset fixes; conflicts are errors."""
    fixed = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels}
    kwargs = dict(cfg.model.kwargs)
    for k, v in fixed.items():
        if k in kwargs and kwargs[k] != v:
            raise ConfigError(f"model.kwargs.{k}: {kwargs[k]} conflicts with the dataset ({v})")
        kwargs[k] = v
    return validate_model_kwargs(cfg.model.name, kwargs)


def _setup_data(cfg: Config, run_dir: Path, resume_ckpt: dict | None, write: bool):
    spec: DatasetSpec = load_dataset(cfg.data.dataset)
    if not spec.labels:
        raise DataError("the dataset declares no labels (add 'labels' to dataset.json)", spec.source)
    first = read_image(spec.training[0].images[0])
    spatial_dims = first.geometry.ndim
    channels = spec.channel_names or [f"channel_{i}" for i in range(len(spec.training[0].images))]
    in_channels = sum(read_image(p).channels for p in spec.training[0].images)
    if resume_ckpt is not None:
        splits = resume_ckpt["train_state"]["splits"]
        by_name = {c.name: c for c in spec.training}
        train_cases = [by_name[n] for n in splits["train"] if n in by_name]
        val_cases = [by_name[n] for n in splits["val"] if n in by_name]
        target_spacing = resume_ckpt["preprocess"]["target_spacing"]
    else:
        train_cases, val_cases = split_cases(spec.training, cfg.data.val_fraction, cfg.seed, cfg.data.val_cases)
        ts = cfg.preprocess.target_spacing
        orientation = resolve_orientation(cfg.preprocess.orientation, spatial_dims)
        target_spacing = median_spacing(train_cases, orientation) if ts == "median" else ts
    if target_spacing is not None and len(target_spacing) != spatial_dims:
        raise ConfigError(f"preprocess.target_spacing {target_spacing} has {len(target_spacing)} axes, "
                          f"the images have {spatial_dims}")
    if write:
        atomic_write_json(run_dir / "splits.json", {"train": [c.name for c in train_cases],
                                                    "val": [c.name for c in val_cases],
                                                    "target_spacing": target_spacing})
    return spec, spatial_dims, channels, in_channels, train_cases, val_cases, target_spacing


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    cols = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def train(cfg: Config, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a segmentation model as configured; see the module docstring for the outputs.

    Under ``torchrun`` (or with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set) this joins
    the process group and trains data-parallel; every rank returns the same :class:`TrainResult`.

    Args:
        cfg: the validated run config.
        resume: continue from ``<run_dir>/checkpoints/last.pt`` (epochs may be extended; the number of
            processes may differ from the interrupted run's).
        progress: draw tqdm progress bars (rank 0 only).

    Raises:
        DataError, ConfigError: bad inputs (one line naming the file/key).
        TrainingError: a non-finite loss, or a process of a distributed run died or hung; the last
            good checkpoint is kept.
    """
    with distributed_context(cfg.train.device, cfg.train.dist_timeout_s) as ctx:
        return _train(cfg, ctx, resume, progress and ctx.is_main)


def _train(cfg: Config, ctx: DistContext, resume: bool, progress: bool) -> TrainResult:
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    main = ctx.is_main
    resume_ckpt = None
    if resume:
        resume_ckpt = load_checkpoint(last_path)
        if "train_state" not in resume_ckpt:
            raise TrainingError("checkpoint holds no training state; cannot resume", last_path)
    elif last_path.exists():
        raise TrainingError(f"a run already exists here ({last_path}); use --resume to continue it, or "
                            "choose another output_dir", run_dir)
    barrier(ctx)  # every rank has looked at last.pt before rank 0 can write a new one
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    spec, nd, channels, in_ch, train_cases, val_cases, spacing = _setup_data(cfg, run_dir, resume_ckpt, main)
    num_classes = spec.num_classes
    kwargs = model_kwargs_for(cfg, nd, in_ch, num_classes)
    if resume_ckpt is not None and (resume_ckpt["model"]["name"] != cfg.model.name
                                    or resume_ckpt["model"]["kwargs"] != kwargs):
        raise ConfigError("model.*: the model differs from the run being resumed", last_path)
    device = ctx.device
    amp_dtype = amp_dtype_for(cfg.train.amp, device)
    net = create_model(cfg.model.name, **kwargs)
    if resume_ckpt is not None:
        net.load_state_dict(resume_ckpt["state_dict"])
    base_loss = DiceCELoss(num_classes, dice_weight=cfg.train.dice_weight, ce_weight=cfg.train.ce_weight)
    loss_fn = DeepSupervisionLoss(base_loss)
    # Each rank caches all training cases (every epoch shards a new permutation) but only its share of
    # the validation cases.
    train_ds, val_ds = build_datasets(cfg, train_cases, shard(val_cases, ctx.rank, ctx.world_size), nd, spacing,
                                      spec.labels, run_dir)
    model = wrap_model(net, ctx, cfg.train.sync_batchnorm)
    net = unwrap(model)  # SyncBatchNorm conversion may have replaced modules
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.train.scheduler, cfg.train.epochs, cfg.train.warmup_epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    state = {"epoch": 0, "history": [], "best_metric": -1.0, "best_epoch": -1, "stale": 0}
    if resume_ckpt is not None:
        ts = resume_ckpt["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        # --resume may extend the run: refit the schedule to the new length and reset the current lr,
        # which the old schedule may have taken to 0 at its last epoch.
        scheduler.lr_lambdas[0].epochs = cfg.train.epochs
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
        scaler.load_state_dict(ts["scaler"])
        restore_rng_state(ts["rng"])
        state = {k: ts[k] for k in state}
    if state["epoch"] >= cfg.train.epochs:
        raise TrainingError(f"the run already finished {state['epoch']} epochs; raise train.epochs to "
                            "extend it (e.g. --set train.epochs=N)", last_path)

    base_payload = {
        "model": {"name": cfg.model.name, "kwargs": kwargs},
        "labels": {str(k): v for k, v in spec.labels.items()},
        "channels": channels, "spatial_dims": nd,
        "preprocess": {"orientation": resolve_orientation(cfg.preprocess.orientation, nd),
                       "target_spacing": spacing, "normalization": cfg.preprocess.normalization,
                       "zscore_nonzero": cfg.preprocess.zscore_nonzero,
                       "ct_window": list(cfg.preprocess.ct_window)},
        "patch_size": list(cfg.train.patch_size),
        "infer": {"overlap": cfg.infer.overlap, "blend": cfg.infer.blend, "tta": cfg.infer.tta,
                  "sw_batch_size": cfg.infer.sw_batch_size},
        "config": config_to_dict(cfg),
    }
    stepper = Stepper(model, optimizer, scaler, ctx, amp_dtype, cfg.train.grad_clip, cfg.train.grad_accumulation)

    def loss_of(batch: dict[str, Any]) -> torch.Tensor:  # image (B, C, *patch), label (B, 1, *patch)
        x = torch.as_tensor(batch["image"]).to(device, non_blocking=True)
        y = torch.as_tensor(batch["label"]).round().long().to(device, non_blocking=True)
        return loss_fn(model(x), y)

    def non_finite(loss: float, step: int, epoch: int) -> TrainingError:
        good = f"the last good checkpoint ({last_path}) is kept" if last_path.exists() else \
            "no checkpoint had been written yet"
        return TrainingError(f"loss became {loss} at epoch {epoch + 1}, step {step + 1}; stopped, and {good}. "
                             "Try a lower train.lr or train.amp=off", run_dir)

    writer = _tensorboard(run_dir) if main else None
    class_names = [spec.labels[k] for k in range(1, num_classes)]
    try:
        with communication_errors(ctx, last_path):
            for epoch in range(state["epoch"], cfg.train.epochs):
                t0 = time.perf_counter()
                model.train()
                loader = train_loader(train_ds, cfg, epoch, ctx.rank, ctx.world_size)
                bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                           disable=not progress, dynamic_ncols=True)
                losses = stepper.epoch(bar, len(loader), loss_of, functools.partial(non_finite, epoch=epoch),
                                       lambda loss, b=bar: b.set_postfix(loss=f"{loss:.4f}"))
                row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses)),
                                       "lr": optimizer.param_groups[0]["lr"]}
                scheduler.step()
                improved = False
                if val_cases and ((epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs):
                    dice = validate(net, val_ds, device, cfg.train.patch_size, num_classes, cfg.infer.overlap,
                                    cfg.infer.blend, cfg.infer.sw_batch_size, amp_dtype, ctx)
                    row["val_dice"] = sum(dice) / len(dice)
                    row.update({f"val_dice_{n}": d for n, d in zip(class_names, dice)})
                    if row["val_dice"] > state["best_metric"]:
                        state.update(best_metric=row["val_dice"], best_epoch=epoch + 1, stale=0)
                        improved = True
                    else:
                        state["stale"] += 1
                elif not val_cases:
                    improved = True  # no validation: the latest model is the best we know
                    state.update(best_epoch=epoch + 1)
                row["time_s"] = round(time.perf_counter() - t0, 3)
                state["history"].append(row)
                state["epoch"] = epoch + 1
                if main:
                    _save_epoch(base_payload, net, state, optimizer, scheduler, scaler, train_cases, val_cases,
                                last_path, best_path if improved else None)
                    _write_log(run_dir / "log.csv", state["history"])
                    if writer is not None:
                        for k, v in row.items():
                            if k != "epoch":
                                writer.add_scalar(k, v, epoch + 1)
                if progress:
                    tqdm.write(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in row.items()))
                patience = cfg.train.early_stopping_patience
                if patience and state["stale"] >= patience:
                    tqdm.write(f"early stopping: no improvement in {patience} validations") if progress else None
                    break
    finally:
        if writer is not None:
            writer.close()
    if main:
        atomic_write_json(run_dir / "train_summary.json", {
            "best_metric": state["best_metric"], "best_epoch": state["best_epoch"], "epochs": state["epoch"],
            "last_checkpoint": str(last_path), "best_checkpoint": str(best_path), "history": state["history"]})
    barrier(ctx)  # rank 0 has written the final checkpoints before any rank reports them
    return TrainResult(run_dir, last_path, best_path if best_path.exists() else None, state["best_metric"],
                       state["best_epoch"], state["history"])


def _save_epoch(base_payload: dict[str, Any], net: torch.nn.Module, state: dict[str, Any], optimizer, scheduler,
                scaler, train_cases, val_cases, last_path: Path, best_path: Path | None) -> None:
    """Write ``last.pt`` (and ``best.pt`` when given) with the full training state (rank 0 only)."""
    payload = {**base_payload, "state_dict": net.state_dict(), "train_state": {
        **state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "rng": capture_rng_state(),
        "splits": {"train": [c.name for c in train_cases], "val": [c.name for c in val_cases]}}}
    save_checkpoint(payload, last_path)
    if best_path is not None:
        save_checkpoint(payload, best_path)


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch rows of ``log.csv`` (for reports and tests)."""
    with open(Path(run_dir) / "log.csv", newline="") as fh:
        return [{k: json.loads(v) if v and v[0] in "-0123456789" else v for k, v in r.items()}
                for r in csv.DictReader(fh)]
