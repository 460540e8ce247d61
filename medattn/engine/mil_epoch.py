"""Training one MIL model (one fold × one seed): losses, epochs, early stopping, checkpoints, resume.

:func:`train_fold` is called by :func:`medattn.engine.mil_trainer.train_mil` for every fold and seed.
Its folder ``fold_<k>/seed_<s>/`` gets ``last.pt`` (full training state, written after every epoch),
``best.pt`` (best validation score), ``log.csv`` and, once the held-out fold is predicted,
``result.json``. A job whose ``result.json`` exists is done; one with only ``last.pt`` continues from
it exactly (model, optimizer, RNG, early-stopping counters).

Several processes: DDP averages gradients; each rank draws a disjoint shard of every epoch's bags
(``DistributedSampler``, permutation seeded by ``(seed, epoch)``); validation and test bags are
sharded and their logits summed over ranks, so every rank sees all logits and takes the same
early-stopping decision; rank 0 writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from medattn.config.mil_schema import MilConfig
from medattn.data.bag_dataset import BagDataset, collate_bags
from medattn.engine.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state
from medattn.engine.distributed import DistContext, all_sum, barrier, shard, unwrap, wrap_model
from medattn.engine.mil_checkpoint import save_mil_checkpoint
from medattn.engine.mil_losses import cox_loss, nll_survival_loss, with_attention_entropy
from medattn.engine.step import Stepper
from medattn.errors import ConfigError, TrainingError
from medattn.evaluate.mil_evaluate import write_rows_csv
from medattn.models import create_model


@dataclass
class MilObjective:
    """The training loss of a task: class-weighted cross-entropy, Cox, or discrete-time NLL (+ AEM).

    Every loss is a per-bag mean (class weights have mean 1 over the training bags), so DDP's gradient
    average over N ranks × b bags equals the gradient of one batch of N·b bags. Cox is the exception:
    its risk sets are the bags of one step on one rank.
    """

    task: str
    survival_loss: str = "nll"
    weights: Tensor | None = None  #: [C] class weights (classification)
    aem_lambda: float = 0.0
    aem_normalize: bool = True

    def from_logits(self, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Task loss of logits [B, C] against the batch targets (no AEM term)."""
        dev = logits.device
        if self.task == "classification":
            per_bag = F.cross_entropy(logits.float(), batch["label"].to(dev), reduction="none")
            if self.weights is not None:
                per_bag = per_bag * self.weights.to(dev)[batch["label"].to(dev)]
            return per_bag.mean()
        if self.survival_loss == "cox":
            return cox_loss(logits[:, 0].float(), batch["time"].to(dev), batch["event"].to(dev))
        return nll_survival_loss(logits.float(), batch["bin"].to(dev), batch["event"].to(dev))

    def __call__(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """Loss of a model output ``{"logits", "attention"}`` (with the AEM term when λ > 0)."""
        loss = self.from_logits(out["logits"], batch)
        return with_attention_entropy(loss, out["attention"], batch["mask"].to(loss.device), self.aem_lambda,
                                      self.aem_normalize)


def predict_logits(model: nn.Module, dataset: BagDataset, ctx: DistContext, batch_size: int = 1) -> Tensor:
    """Logits [len(dataset), C] (float32, CPU) of every bag, in dataset order, on every rank.

    Each rank predicts every ``world_size``-th bag; the results are summed over ranks.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    mine = shard(list(range(len(dataset))), ctx.rank, ctx.world_size)
    n_out = net.classifier.out_features
    full = torch.zeros(len(dataset), n_out, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            idx = mine[start:start + batch_size]
            batch = collate_bags([dataset[i] for i in idx])
            out = net(batch["features"].to(ctx.device), batch["mask"].to(ctx.device))
            full[idx] = out["logits"].double().cpu()
    net.train(was_training)
    return all_sum(full, ctx).float()


def targets_of(dataset: BagDataset) -> dict[str, Tensor]:
    """The dataset's targets as a batch-like dict of [n] tensors (``label``, ``time``, ``event``, ``bin``)."""
    idx, t = dataset.indices, dataset.targets
    return {"label": torch.as_tensor(t["label"][idx]).long(), "time": torch.as_tensor(t["time"][idx]).float(),
            "event": torch.as_tensor(t["event"][idx]).float(), "bin": torch.as_tensor(t["bin"][idx]).long()}


@dataclass
class FoldJob:
    """One model to train: a fold's datasets, a seed, and where it goes."""

    fold: int
    seed: int
    folder: Path
    train: BagDataset
    val: BagDataset
    model_kwargs: dict[str, Any]
    objective: MilObjective
    score: Callable[[Tensor, BagDataset], float]  #: validation score of logits (higher is better; may be NaN)
    task: dict[str, Any]  #: checkpoint ``task`` section
    encoder: dict[str, Any]  #: checkpoint ``encoder`` section


def feature_statistics(ds: BagDataset) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and standard deviation ([D] each) over every patch of the bags in ``ds``
    (accumulated in float64 bag by bag, so nothing is concatenated)."""
    total, total_sq, n = 0.0, 0.0, 0
    for b in ds.indices:
        x = ds.features[int(b)].double()
        total, total_sq, n = total + x.sum(0), total_sq + (x * x).sum(0), n + x.shape[0]
    mean = total / max(n, 1)
    var = (total_sq / max(n, 1) - mean * mean).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


def _key(metric: float, loss: float) -> tuple[float, float]:
    """Early-stopping order: the validation score, then the lower validation loss."""
    return (metric if math.isfinite(metric) else -math.inf, -loss if math.isfinite(loss) else -math.inf)


def train_fold(cfg: MilConfig, job: FoldJob, ctx: DistContext, progress: bool) -> nn.Module:
    """Train (or continue) one fold × seed; returns the model (plain, eval mode) with the best weights."""
    tc = cfg.train
    last_path, best_path = job.folder / "last.pt", job.folder / "best.pt"
    torch.manual_seed(job.seed * 100_003 + job.fold)
    net = create_model(cfg.model.name, **job.model_kwargs)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_key": [-math.inf, -math.inf], "best_epoch": 0,
                             "stale": 0, "finished": False}
    ckpt = load_checkpoint(last_path) if last_path.exists() else None
    if ckpt is not None:
        if ckpt["model"]["kwargs"] != getattr(net, "init_kwargs", job.model_kwargs):
            raise ConfigError(f"model.*: the model differs from the run being resumed ({ckpt['model']['kwargs']})",
                              last_path)
        net.load_state_dict(ckpt["state_dict"])
        state = {k: ckpt["train_state"][k] for k in state}
    elif cfg.train.normalize_features and hasattr(net, "set_feature_normalization"):
        net.set_feature_normalization(*feature_statistics(job.train))
    model = wrap_model(net, ctx)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["train_state"]["optimizer"])
        restore_rng_state(ckpt["train_state"]["rng"])
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if best_path.exists():
        best_state = load_checkpoint(best_path)["state_dict"]
    stepper = Stepper(model, optimizer, torch.amp.GradScaler(ctx.device.type, enabled=False), ctx,
                      grad_clip=tc.grad_clip, accumulation=tc.grad_accumulation)
    sampler = DistributedSampler(job.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=job.seed * 100_003 + job.fold, drop_last=False)
    loader = DataLoader(job.train, batch_size=tc.batch_size, sampler=sampler, collate_fn=collate_bags)
    val_targets = targets_of(job.val)

    def loss_of(batch: dict[str, Tensor]) -> Tensor:
        out = model(batch["features"].to(ctx.device, non_blocking=True), batch["mask"].to(ctx.device))
        return job.objective(out, batch)

    def fail(loss: float, step: int, epoch: int) -> TrainingError:
        kept = f"{last_path} is kept" if last_path.exists() else "no checkpoint had been written yet"
        return TrainingError(f"fold {job.fold}, seed {job.seed}: loss became {loss} at epoch {epoch + 1}, step "
                             f"{step + 1}; stopped, and {kept}. Try a lower train.lr", job.folder)

    bar = tqdm(total=tc.epochs, initial=state["epoch"], desc=f"fold {job.fold} seed {job.seed}", leave=False,
               disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(state["epoch"], tc.epochs):
            if state["finished"]:
                break
            t0 = time.perf_counter()
            model.train()
            sampler.set_epoch(epoch)
            job.train.set_epoch(epoch)
            losses = stepper.epoch(loader, len(loader), loss_of, lambda loss, step, e=epoch: fail(loss, step, e))
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses))}
            improved = True
            if len(job.val):
                logits = predict_logits(model, job.val, ctx, tc.batch_size)
                row["val_loss"] = float(job.objective.from_logits(logits, val_targets))
                row["val_score"] = float(job.score(logits, job.val))
                key = _key(row["val_score"], row["val_loss"])
                improved = key > tuple(state["best_key"])
                if improved:
                    state["best_key"] = list(key)
            row["time_s"] = round(time.perf_counter() - t0, 3)
            state["history"].append(row)
            state["epoch"] = epoch + 1
            state["stale"] = 0 if improved else state["stale"] + 1
            if improved:
                state["best_epoch"] = epoch + 1
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            patience = tc.early_stopping_patience
            state["finished"] = state["epoch"] >= tc.epochs or bool(patience and state["stale"] >= patience)
            if ctx.is_main:
                _save(cfg, job, net, state, optimizer, last_path, best_path if improved else None)
                write_rows_csv(job.folder / "log.csv", state["history"])
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k in ("train_loss", "val_score")})
    finally:
        bar.close()
    barrier(ctx)  # rank 0's checkpoints are on disk before any rank moves on
    net.load_state_dict(best_state)
    return net.eval()


def _save(cfg: MilConfig, job: FoldJob, net: nn.Module, state: dict[str, Any], optimizer: torch.optim.Optimizer,
          last_path: Path, best_path: Path | None) -> None:
    extra = {"fold": job.fold, "seed": job.seed, "epoch": state["epoch"]}
    save_mil_checkpoint(last_path, net, cfg, job.task, job.encoder, {
        **extra, "train_state": {**state, "optimizer": optimizer.state_dict(), "rng": capture_rng_state()}})
    if best_path is not None:
        save_mil_checkpoint(best_path, net, cfg, job.task, job.encoder, {**extra, "history": state["history"]})
