"""Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas").

One implementation for 2-D and 3-D: ``spatial_dims`` picks the layer types (see :mod:`.blocks`).
Tensors are (B, C, *spatial) with ``len(spatial) == spatial_dims``; level ``l`` of the network works
at ``1 / 2**l`` of the input resolution (level 0 = full resolution, level ``depth - 1`` = bottleneck).

Design choices (all documented here, checked by the tests and ``bench/attention_unet.py``):

* Encoder level ``l``: two conv3 → norm → LeakyReLU(0.01) blocks. Levels ``l > 0`` downsample with
  a stride-2 first conv rather than max-pool + conv: the strided conv computes its output only at the
  coarse resolution, so it needs 1/8 (3-D) of the multiply-adds of pool-then-conv and no pooling pass,
  which is what makes it the faster option on CPU (nnU-Net does the same).
* Decoder level ``l``: the additive attention gate filters the skip ``x_l`` with the gating signal
  ``g`` = decoder output of level ``l + 1`` (the bottleneck for the deepest gate); ``g`` is upsampled
  by a stride-2 transposed conv, concatenated after the gated skip, then two conv blocks.
* Attention gate, exactly as in the paper (see :class:`AttentionGate`).
* Inputs of any size: padded at the high end of every spatial axis with *replicate* padding to a
  multiple of ``2**(depth - 1)``; logits (and gate maps, deep-supervision outputs) are cropped back
  to ``ceil(n / 2**l)`` at level ``l``. Replicate (not zero) padding keeps the padded border close
  to the image statistics, so instance-norm statistics are barely affected by the padding.
* Convs followed by instance/batch norm have no bias (it would be cancelled by the norm).
* Weights: Kaiming-normal (a = 0.01, matching the LeakyReLU slope), biases zero.
* Memory layout: on CPU with instance or batch norm the activations are kept channels-last
  (see :mod:`medattn.models.blocks`: oneDNN then skips its layout reorders; a training step at
  2 x 64^3 was ~1.3x faster on a 2-core CPU); outputs are returned in the ordinary contiguous
  layout. On GPU, and with group norm (whose channels-last backward is slow on CPU), the ordinary
  layout is used throughout.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medattn.kernels.attention_gate import attention_gate, use_fused_gate
from medattn.models.blocks import (
    LINEAR_MODE,
    DoubleConv,
    NormAct,
    NormKind,
    PointwiseConv,
    conv,
    conv_bias_needed,
    conv_transpose,
    to_channels_last,
)
from medattn.models.registry import register_model

#: Network output: a logits tensor, or the deep-supervision list of them (finest first).
Logits = torch.Tensor | list[torch.Tensor]


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, Fig. 2).

    Inputs: skip ``x`` (B, C_x, *n) and gating signal ``g`` (B, C_g, *(n / 2)) from the coarser level.

    * ``theta_x``: conv kernel 2, stride 2, C_x → C_int (no bias): brings ``x`` to ``g``'s resolution;
    * ``phi_g``: 1×1 conv C_g → C_int (with bias);
    * ``q = psi(ReLU(theta_x(x) + phi_g(g)))`` with ``psi`` a 1×1 conv C_int → 1 (with bias);
    * ``alpha = sigmoid(q)`` (B, 1, *(n / 2)), upsampled (bi/trilinear) to ``x``'s resolution;
    * output ``W(alpha * x)`` (B, C_x, *n) where ``W`` is a 1×1 conv followed by the norm (the conv
      has a bias only for group norm; instance/batch norm would cancel it).

    On CUDA (unless ``MEDATTN_ATTENTION=reference``) ``alpha`` at the gating resolution comes from the
    fused Triton kernel :func:`medattn.kernels.attention_gate.attention_gate`; on CPU from the PyTorch ops.

    ``forward`` returns ``(output, alpha)`` with ``alpha`` at the skip resolution (B, 1, *n), in [0, 1].
    Spatial sizes of ``x`` must be even and exactly twice those of ``g``.
    """

    def __init__(self, spatial_dims: int, skip_channels: int, gating_channels: int, inter_channels: int,
                 norm_kind: NormKind) -> None:
        super().__init__()
        self.mode = LINEAR_MODE[spatial_dims]
        self.theta_x = conv(spatial_dims, skip_channels, inter_channels, kernel_size=2, stride=2, bias=False)
        self.phi_g = PointwiseConv(spatial_dims, gating_channels, inter_channels)
        self.psi = PointwiseConv(spatial_dims, inter_channels, 1)
        self.W = nn.Sequential(
            PointwiseConv(spatial_dims, skip_channels, skip_channels, bias=conv_bias_needed(norm_kind)),
            NormAct(norm_kind, spatial_dims, skip_channels, act=False))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if use_fused_gate(x):  # CUDA: one Triton pass, ReLU(theta_x + phi_g) never written to memory
            alpha = attention_gate(self.theta_x(x), self.phi_g(g), self.psi.weight, self.psi.bias, backend="triton")
        else:
            f = F.relu(self.theta_x(x) + self.phi_g(g), inplace=True)
            alpha = torch.sigmoid(self.psi(f))
        alpha = F.interpolate(alpha, size=x.shape[2:], mode=self.mode, align_corners=False)
        return self.W(x * alpha), alpha


class UpStage(nn.Module):
    """One decoder level: gate the skip, upsample ``g``, concatenate, two conv blocks.

    ``forward(x, g)`` with skip ``x`` (B, C, *n) and ``g`` (B, C_g, *(n / 2)) returns
    ``(y, alpha)``: y (B, C, *n) and the gate map alpha (B, 1, *n).
    """

    def __init__(self, spatial_dims: int, channels: int, gating_channels: int, norm_kind: NormKind,
                 dropout: float) -> None:
        super().__init__()
        self.gate = AttentionGate(spatial_dims, channels, gating_channels, max(channels // 2, 1), norm_kind)
        self.up = conv_transpose(spatial_dims, gating_channels, channels, stride=2)
        self.convs = DoubleConv(spatial_dims, 2 * channels, channels, norm_kind, dropout=dropout)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gated, alpha = self.gate(x, g)
        return self.convs(torch.cat([gated, self.up(g)], dim=1)), alpha


@register_model("attention_unet")
class AttentionUNet(nn.Module):
    """Attention U-Net for 2-D or 3-D segmentation.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels C_in.
        out_channels: number of classes K (logit channels).
        channels: feature channels per level, finest first; ``depth = len(channels)`` (>= 2).
        norm: ``"instance"``, ``"batch"`` or ``"group"`` (see :func:`medattn.models.blocks.norm`).
        deep_supervision: add 1×1 heads on every decoder level (used in train mode only).
        dropout: channel dropout probability after every 3×3 conv (0 disables it).

    ``forward(x)`` with x (B, C_in, *spatial) of any size returns logits (B, K, *spatial); in train
    mode with deep supervision a list ``[(B, K, *spatial), (B, K, *ceil(spatial / 2)), ...]`` of
    ``depth - 1`` tensors (low-resolution heads are not upsampled).

    ``memory_layout`` (an attribute, not a constructor argument: it changes speed, not results)
    is ``"auto"`` (channels-last on CPU unless group norm), ``"channels_last"`` or ``"contiguous"``.
    """

    memory_layout: Literal["auto", "channels_last", "contiguous"] = "auto"

    def __init__(self, *, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 channels: tuple[int, ...] = (16, 32, 64, 128, 256),
                 norm: Literal["instance", "batch", "group"] = "instance",
                 deep_supervision: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(f"channels needs at least 2 positive entries, got {list(channels)}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.spatial_dims = spatial_dims
        self.norm_kind = norm
        self.channels = channels
        self.depth = len(channels)
        self.deep_supervision = deep_supervision

        self.encoder = nn.ModuleList(
            DoubleConv(spatial_dims, in_channels if lvl == 0 else channels[lvl - 1], channels[lvl], norm,
                       stride=1 if lvl == 0 else 2, dropout=dropout)
            for lvl in range(self.depth))
        # decoder[l] produces level l (finest = 0) from the skip of level l and the output of level l + 1
        self.decoder = nn.ModuleList(
            UpStage(spatial_dims, channels[lvl], channels[lvl + 1], norm, dropout)
            for lvl in range(self.depth - 1))
        n_heads = self.depth - 1 if deep_supervision else 1
        self.heads = nn.ModuleList(PointwiseConv(spatial_dims, channels[lvl], out_channels)
                                   for lvl in range(n_heads))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, PointwiseConv)):
                nn.init.kaiming_normal_(m.weight, a=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _use_channels_last(self, x: torch.Tensor) -> bool:
        if self.memory_layout == "auto":
            return x.device.type == "cpu" and self.norm_kind != "group"
        return self.memory_layout == "channels_last"

    @property
    def size_multiple(self) -> int:
        """Inputs are padded internally to a multiple of this (``2 ** (depth - 1)``)."""
        return 2 ** (self.depth - 1)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.size_multiple
        extra = [(-n) % m for n in x.shape[2:]]
        if not any(extra):
            return x
        pad: list[int] = []
        for e in reversed(extra):  # F.pad lists the last axis first
            pad += [0, e]
        return F.pad(x, pad, mode="replicate")

    @staticmethod
    def _crop(t: torch.Tensor, spatial: tuple[int, ...], level: int) -> torch.Tensor:
        size = [math.ceil(n / 2**level) for n in spatial]
        if list(t.shape[2:]) == size:
            return t
        return t[(slice(None), slice(None), *(slice(0, s) for s in size))]

    def forward(self, x: torch.Tensor, return_gates: bool = False
                ) -> Logits | tuple[Logits, list[torch.Tensor]]:
        """Segment ``x`` (B, C_in, *spatial).

        Returns logits (B, K, *spatial), or the deep-supervision list in train mode (see class doc);
        with ``return_gates=True`` a pair ``(logits, gates)`` where ``gates`` is a list of
        ``depth - 1`` attention maps (B, 1, *ceil(spatial / 2**l)) in [0, 1], finest (l = 0) first.
        """
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims + 2}-D input (B, C, *spatial), "
                             f"got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        h = self._pad(x)
        if self._use_channels_last(h):
            h = to_channels_last(h)
        skips = []
        for stage in self.encoder:
            h = stage(h)
            skips.append(h)
        outputs: dict[int, torch.Tensor] = {}
        gates: dict[int, torch.Tensor] = {}
        want_ds = self.deep_supervision and self.training
        for lvl in reversed(range(self.depth - 1)):
            h, gates[lvl] = self.decoder[lvl](skips[lvl], h)
            if lvl == 0 or want_ds:
                outputs[lvl] = self._crop(self.heads[lvl](h), spatial, lvl).contiguous()
        logits = [outputs[lvl] for lvl in range(self.depth - 1)] if want_ds else outputs[0]
        if return_gates:
            return logits, [self._crop(gates[lvl], spatial, lvl).contiguous() for lvl in range(self.depth - 1)]
        return logits
