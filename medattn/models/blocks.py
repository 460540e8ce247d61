"""Layer factories and small building blocks shared by the networks, for 2-D and 3-D alike.

Every factory takes ``spatial_dims`` (2 or 3) and returns the matching ``nn.Conv2d``/``nn.Conv3d``
(etc.) so that one network definition serves both. Feature maps are (B, C, *spatial) with
``len(spatial) == spatial_dims``.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

NormKind = Literal["instance", "batch", "group"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}

#: Upsampling mode that matches ``spatial_dims`` for ``F.interpolate``.
LINEAR_MODE = {2: "bilinear", 3: "trilinear"}

#: Default negative slope of the LeakyReLU activations (as in nnU-Net).
LEAKY_SLOPE = 0.01


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
         bias: bool = True) -> nn.Module:
    """A ``kernel_size``-cubed convolution; odd kernels get 'same' padding, even kernels none.

    Output spatial size is ``ceil(n / stride)`` for odd kernels and ``n // stride`` for
    ``kernel_size == stride`` (the non-overlapping case used for the gate's theta_x).
    """
    _check_dims(spatial_dims)
    padding = kernel_size // 2 if kernel_size % 2 == 1 else 0
    return _CONV[spatial_dims](in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                               bias=bias)


def conv_transpose(spatial_dims: int, in_channels: int, out_channels: int, stride: int = 2) -> nn.Module:
    """Transposed convolution with kernel == stride: (B, C_in, *n) → (B, C_out, *(n * stride))."""
    _check_dims(spatial_dims)
    return _CONV_T[spatial_dims](in_channels, out_channels, kernel_size=stride, stride=stride, bias=True)


def group_count(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` that is <= ``max_groups`` (number of GroupNorm groups)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def norm(kind: NormKind, spatial_dims: int, channels: int) -> nn.Module:
    """Normalisation layer over ``channels`` feature maps, with a learnable affine transform.

    ``instance``: per sample and channel, no running statistics (as in nnU-Net). Built as
    ``nn.GroupNorm(channels, channels)`` (one channel per group), which computes exactly
    ``InstanceNorm{2,3}d(channels, affine=True)`` (same eps 1e-5, biased variance, per-channel affine)
    but with PyTorch's fused GroupNorm kernels: on CPU its forward + backward is ~3x faster, and its
    output is not a view, so the following activation can run in place without extra copies.
    ``batch``: per channel over the batch (running statistics for eval);
    ``group``: GroupNorm with :func:`group_count` groups (at most 8).
    """
    _check_dims(spatial_dims)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "batch":
        return _BATCH[spatial_dims](channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"unknown norm {kind!r} (known: instance, batch, group)")


def conv_bias_needed(kind: NormKind) -> bool:
    """Whether a conv followed by this norm needs its own bias.

    Instance and batch norm subtract a per-channel mean, which cancels a per-channel conv bias
    exactly, so the bias is dropped there (one fewer reduction in the backward pass). GroupNorm
    subtracts a mean shared by several channels, so a per-channel bias still matters.
    """
    return kind == "group"


class ConvNormAct(nn.Sequential):
    """conv(k×k[×k], stride) → [dropout] → norm → LeakyReLU(0.01, inplace).

    (B, C_in, *n) → (B, C_out, *ceil(n / stride)). Dropout (channel-wise, ``Dropout2d/3d``) is only
    inserted when ``dropout > 0``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm_kind: NormKind,
                 stride: int = 1, kernel_size: int = 3, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [conv(spatial_dims, in_channels, out_channels, kernel_size, stride,
                                        bias=conv_bias_needed(norm_kind))]
        if dropout > 0:
            layers.append(_DROPOUT[spatial_dims](dropout))
        layers += [norm(norm_kind, spatial_dims, out_channels),
                   nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two :class:`ConvNormAct` blocks; the first may be strided (downsampling).

    (B, C_in, *n) → (B, C_out, *ceil(n / stride)).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm_kind: NormKind,
                 stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, out_channels, norm_kind, stride=stride, dropout=dropout),
            ConvNormAct(spatial_dims, out_channels, out_channels, norm_kind, dropout=dropout),
        )
