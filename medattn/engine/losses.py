"""Segmentation losses: soft Dice + cross-entropy, and its deep-supervision wrapper.

Conventions: logits are (B, K, *spatial) raw scores for K classes (K >= 2, softmax over dim 1);
targets are integer label maps (B, 1, *spatial) with values in 0..K-1 (0 = background).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 logits are promoted to float32; float32/float64 stay as they are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _label_map(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Check shapes/values and return the target as int64 (B, *spatial)."""
    if logits.ndim < 3 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must be (B, {num_classes}, *spatial), got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], 1, *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must be (B, 1, *spatial) = {expected} to match the logits, "
                         f"got {tuple(target.shape)}")
    if target.is_floating_point() and not torch.equal(target, target.round()):
        raise ValueError("target must hold integer class labels, got non-integer values")
    labels = target[:, 0].long()
    lo, hi = torch.aminmax(labels)
    if int(lo) < 0 or int(hi) >= num_classes:
        raise ValueError(f"target labels must be in 0..{num_classes - 1}, got values {int(lo)}..{int(hi)}")
    return labels


class DiceCELoss(nn.Module):
    """``dice_weight * soft_dice_loss + ce_weight * cross_entropy``.

    * Cross-entropy: mean over all voxels of ``-log softmax(logits)[target]``.
    * Soft Dice: ``p = softmax(logits)``, ``t = one_hot(target)``; per class ``k`` (and per sample
      unless ``batch_dice``) ``dice_k = (2 * sum(p_k * t_k) + smooth) / (sum(p_k) + sum(t_k) + smooth)``
      with sums over the spatial axes (and the batch axis when ``batch_dice``); the loss is
      ``1 - mean(dice_k)`` over classes (and samples). Class 0 is left out unless
      ``include_background``. A class absent from both prediction and target scores dice = 1.

    ``forward(logits (B, K, *spatial), target (B, 1, *spatial) int)`` returns a scalar tensor.
    Computation is in float32 for half-precision logits (float64 logits stay float64).
    """

    def __init__(self, num_classes: int, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 smooth: float = 1e-5, include_background: bool = False, batch_dice: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got dice={dice_weight}, ce={ce_weight}")
        self.num_classes = num_classes
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.smooth = float(smooth)
        self.include_background = include_background
        self.batch_dice = batch_dice

    def ce_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Voxel-mean cross-entropy (scalar)."""
        labels = _label_map(logits, target, self.num_classes)
        return F.cross_entropy(_at_least_float32(logits), labels)

    def dice_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``1 - mean soft Dice`` (scalar), as described in the class docstring."""
        labels = _label_map(logits, target, self.num_classes)
        return self._dice(logits, labels)

    def _dice(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(_at_least_float32(logits), dim=1)
        onehot = torch.zeros_like(probs).scatter_(1, labels.unsqueeze(1), 1.0)
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        axes = [0, *range(2, probs.ndim)] if self.batch_dice else list(range(2, probs.ndim))
        intersection = (probs * onehot).sum(axes)
        denominator = probs.sum(axes) + onehot.sum(axes)
        dice = (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        return 1.0 - dice.mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = _label_map(logits, target, self.num_classes)
        loss = _at_least_float32(logits).new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(_at_least_float32(logits), labels)
        if self.dice_weight:
            loss = loss + self.dice_weight * self._dice(logits, labels)
        return loss


def downsample_labels(target: torch.Tensor, stride: int) -> torch.Tensor:
    """Nearest-neighbour subsampling of a label map (B, 1, *n) → (B, 1, *ceil(n / stride)).

    Keeps voxels ``0, stride, 2 * stride, ...`` on every spatial axis (no interpolation, so labels
    stay valid class indices). This matches a network whose level-``l`` output voxel ``i`` sits over
    input voxels ``i * 2**l ... (i + 1) * 2**l - 1`` (stride = ``2**l``).
    """
    if stride == 1:
        return target
    return target[(slice(None), slice(None), *(slice(None, None, stride) for _ in target.shape[2:]))]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``base`` over deep-supervision outputs at decreasing resolutions.

    ``forward(outputs, target)``: ``outputs`` is a list ``[logits_0, logits_1, ...]`` where
    ``logits_i`` is (B, K, *ceil(spatial / 2**i)) (as :class:`medattn.models.AttentionUNet` returns
    in train mode), ``target`` is (B, 1, *spatial). Output ``i`` is compared with
    :func:`downsample_labels` ``(target, 2**i)``. ``weights`` default to ``1, 1/2, 1/4, ...``; they
    are normalised to sum to 1 (zero weights skip the computation). A plain tensor instead of a
    list is passed straight to ``base``.
    """

    def __init__(self, base: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"deep-supervision weights must be >= 0 with a positive sum, "
                             f"got {list(weights)}")
        self.base = base
        self.weights = None if weights is None else tuple(float(w) for w in weights)

    def normalised_weights(self, n: int) -> list[float]:
        """The weights used for ``n`` outputs, summing to 1."""
        raw = [0.5**i for i in range(n)] if self.weights is None else list(self.weights)
        if len(raw) != n:
            raise ValueError(f"{len(raw)} deep-supervision weights for {n} outputs")
        total = sum(raw)
        return [w / total for w in raw]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, target)
        weights = self.normalised_weights(len(outputs))
        loss = None
        for i, (logits, w) in enumerate(zip(outputs, weights)):
            t = downsample_labels(target, 2**i)
            if t.shape[2:] != logits.shape[2:]:
                raise ValueError(f"deep-supervision output {i} has spatial shape {tuple(logits.shape[2:])}, "
                                 f"expected {tuple(t.shape[2:])} (target subsampled by {2**i})")
            if w == 0:
                continue
            term = w * self.base(logits, t)
            loss = term if loss is None else loss + term
        assert loss is not None  # at least one weight is positive
        return loss
