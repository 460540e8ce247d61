"""A tiny model with a known output, registered for tests of inference and checkpoints."""

from __future__ import annotations

import torch
from torch import nn

from medattn.models import register_model


@register_model("test_nearest_centre")
class NearestCentre(nn.Module):
    """Per-voxel classifier: logits_k = -steepness * (sum_c w_c * x_c - centre_k)**2.

    With centres (0, 100) it thresholds the (weighted) intensity at 50; with centres 0..K-1 and a large
    steepness it labels each voxel with its rounded intensity. (B, C, *S) → (B, K, *S).
    """

    def __init__(self, *, spatial_dims: int = 3, in_channels: int = 1, centres: list[float] | None = None,
                 channel_weights: list[float] | None = None, steepness: float = 0.001) -> None:
        super().__init__()
        weights = channel_weights or [1.0 / in_channels] * in_channels
        self.weight = nn.Parameter(torch.tensor(weights, dtype=torch.float32))  # a 1×1 convolution
        self.register_buffer("centres", torch.tensor(centres or [0.0, 100.0], dtype=torch.float32))
        self.steepness = steepness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bc...,c->b...", x, self.weight).unsqueeze(1)
        return -self.steepness * (y - self.centres.view(1, -1, *([1] * (x.ndim - 2)))) ** 2
