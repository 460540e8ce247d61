"""Validation during training: whole-case sliding-window prediction and per-class Dice."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medattn.engine.sliding import sliding_window_probabilities


def dice_per_class(pred: torch.Tensor, ref: torch.Tensor, num_classes: int) -> list[float]:
    """Dice of classes 1..K-1 between two label maps of equal shape.

    Convention (as in medattn.evaluate): both empty → 1.0, exactly one empty → 0.0.
    """
    out = []
    for k in range(1, num_classes):
        p, r = pred == k, ref == k
        denom = int(p.sum() + r.sum())
        out.append(1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom)
    return out


def validate(model: nn.Module, dataset, device: torch.device, roi_size: Sequence[int], num_classes: int,
             overlap: float, blend: str, sw_batch_size: int, amp_dtype: torch.dtype | None = None
             ) -> list[float]:
    """Mean per-class Dice (classes 1..K-1) over the cases of a preprocessed validation dataset."""
    model.eval()
    scores: list[list[float]] = []
    for i in range(len(dataset)):
        item = dataset[i]
        image = torch.as_tensor(item["image"]).unsqueeze(0).to(device)
        probs = sliding_window_probabilities(model, image, roi_size, overlap, blend, sw_batch_size,
                                             amp_dtype=amp_dtype)
        pred = probs.argmax(dim=1)[0].cpu()
        ref = torch.as_tensor(item["label"])[0].round().long()
        scores.append(dice_per_class(pred, ref, num_classes))
    return torch.tensor(scores, dtype=torch.float64).mean(dim=0).tolist()
