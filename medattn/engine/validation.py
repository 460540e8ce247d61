"""Validation during training: whole-case sliding-window prediction and per-class Dice.

With several processes each rank validates its own shard of the validation cases and the per-case
scores are summed over ranks, so every rank gets the mean over all validation cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medattn.engine.distributed import DistContext, all_sum
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
             overlap: float, blend: str, sw_batch_size: int, amp_dtype: torch.dtype | None = None,
             ctx: DistContext | None = None) -> list[float]:
    """Mean per-class Dice (classes 1..K-1) over the cases of a preprocessed validation dataset.

    ``model`` maps (B, C, *roi_size) to (B, K, *roi_size) logits; each item of ``dataset`` holds
    ``image`` (C, *S) and ``label`` (1, *S). With a distributed ``ctx``, ``dataset`` is this rank's
    shard (None or empty on a rank without cases) and the mean is over the cases of all ranks; every
    rank must call this function.
    """
    model.eval()
    k = num_classes - 1
    sums, count = torch.zeros(k, dtype=torch.float64), 0
    for i in range(0 if dataset is None else len(dataset)):
        item = dataset[i]
        image = torch.as_tensor(item["image"]).unsqueeze(0).to(device)
        probs = sliding_window_probabilities(model, image, roi_size, overlap, blend, sw_batch_size,
                                             amp_dtype=amp_dtype)
        pred = probs.argmax(dim=1)[0].cpu()
        ref = torch.as_tensor(item["label"])[0].round().long()
        sums += torch.tensor(dice_per_class(pred, ref, num_classes), dtype=torch.float64)
        count += 1
    if ctx is not None:
        total = all_sum([*sums.tolist(), float(count)], ctx)
        sums, count = total[:k], int(total[k])
    if count == 0:
        raise ValueError("validate: no validation cases on any rank")
    return (sums / count).tolist()
