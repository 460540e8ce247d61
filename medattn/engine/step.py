"""Optimizer steps with gradient accumulation, AMP and DDP gradient sync, for any model and loss.

The segmentation trainer uses it, and so can any other training loop (MIL): it only needs a
function that computes a batch's loss. One optimizer step is taken per ``accumulation``
micro-batches; DDP all-reduces the gradients only on the last micro-batch of each group
(``no_sync`` before), and each micro-batch's loss is divided by the group size, so that with
per-sample-mean losses ``k`` micro-batches of ``b`` give the gradient of one batch of ``k b``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medattn.engine.distributed import DistContext, all_mean, no_sync


@dataclass
class Stepper:
    """Runs the optimisation of one epoch (see the module docstring).

    Attributes:
        model: the (possibly DDP-wrapped) model whose parameters ``optimizer`` updates.
        optimizer, scaler: the optimizer and AMP gradient scaler (disabled unless fp16).
        ctx: where this process stands (device, ranks).
        amp_dtype: autocast dtype, or None for full precision.
        grad_clip: max gradient norm (0: no clipping).
        accumulation: micro-batches per optimizer step (>= 1).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ctx: DistContext
    amp_dtype: torch.dtype | None = None
    grad_clip: float = 0.0
    accumulation: int = 1

    def epoch(self, batches: Iterable[Any], n_batches: int, loss_of: Callable[[Any], torch.Tensor],
              fail: Callable[[float, int], Exception], on_loss: Callable[[float], None] | None = None) -> list[float]:
        """Train on ``n_batches`` batches; returns each micro-batch's loss averaged over ranks.

        ``loss_of(batch)`` runs the model (under autocast) and returns a scalar loss tensor.
        ``fail(loss, step)`` is raised when the rank-averaged loss (identical on every rank, so
        every rank stops together) is not finite; no step is taken with it.
        ``on_loss(loss)`` is called after each micro-batch (progress bars).
        """
        device, losses = self.ctx.device, []
        k = self.accumulation
        for step, batch in enumerate(batches):
            first = step - step % k
            group = min(k, n_batches - first)  # the last group of an epoch may be shorter
            sync = step >= first + group - 1
            if step == first:
                self.optimizer.zero_grad(set_to_none=True)
            with contextlib.nullcontext() if sync else no_sync(self.model):
                with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    loss = loss_of(batch)
                mean_loss = all_mean(loss.detach(), self.ctx)
                if not math.isfinite(mean_loss):
                    raise fail(mean_loss, step)
                self.scaler.scale(loss / group).backward()
            if sync:
                if self.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            losses.append(mean_loss)
            if on_loss is not None:
                on_loss(mean_loss)
        return losses
