"""Sliding-window prediction with Gaussian blending and optional flip test-time augmentation."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import nn


def sliding_window_probabilities(model: nn.Module, image: torch.Tensor, roi_size: Sequence[int],
                                 overlap: float = 0.5, blend: str = "gaussian", sw_batch_size: int = 2,
                                 tta: bool = False, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Class probabilities of a whole image by overlapping windows.

    Args:
        model: network mapping (B, C, *roi) to logits (B, K, *roi); called in eval mode under no_grad.
        image: (B, C, *spatial) preprocessed input on the model's device.
        roi_size: window size per spatial axis (the training patch size); smaller images are padded.
        overlap: fraction of overlap between neighbouring windows, in [0, 1).
        blend: "gaussian" (weights fall off towards window borders) or "constant".
        tta: also predict on the image flipped along every non-empty subset of the spatial axes and
            average the probabilities (2**D passes).
        amp_dtype: autocast dtype on CUDA (None: full precision).

    Returns:
        (B, K, *spatial) float32 softmax probabilities.
    """
    nd = image.ndim - 2
    roi = [min(int(r), int(s)) if s >= r else int(r) for r, s in zip(roi_size, image.shape[2:])]
    flips: list[tuple[int, ...]] = [()]
    if tta:
        axes = list(range(2, 2 + nd))
        flips += [c for k in range(1, nd + 1) for c in itertools.combinations(axes, k)]
    total = None
    use_amp = amp_dtype is not None and image.device.type == "cuda"
    with torch.no_grad(), torch.autocast(image.device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
        for dims in flips:
            x = torch.flip(image, dims) if dims else image
            logits = sliding_window_inference(x, roi_size=roi, sw_batch_size=sw_batch_size, predictor=model,
                                              overlap=overlap, mode=blend, padding_mode="constant")
            logits = torch.as_tensor(logits).float()
            probs = torch.softmax(logits, dim=1)
            probs = torch.flip(probs, dims) if dims else probs
            total = probs if total is None else total + probs
    return total / len(flips)
