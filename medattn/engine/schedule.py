"""Learning-rate schedules (per epoch), as multiplicative factors for ``LambdaLR``."""

from __future__ import annotations

import math

import torch


class EpochSchedule:
    """Linear warm-up, then "poly" (nnU-Net: (1 - e/E)^0.9), "cosine" or "constant".

    A plain callable object (no closures), so the scheduler state stays serialisable.
    """

    def __init__(self, kind: str, epochs: int, warmup_epochs: int = 0) -> None:
        self.kind, self.epochs, self.warmup = kind, max(1, epochs), max(0, warmup_epochs)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        t = min(1.0, (epoch - self.warmup) / max(1, self.epochs - self.warmup))
        if self.kind == "poly":
            return (1.0 - t) ** 0.9
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int, warmup_epochs: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, EpochSchedule(kind, epochs, warmup_epochs))
