"""Building blocks of D-Former (Wu et al., "D-Former: A U-shaped Dilated Transformer for 3D Medical
Image Segmentation"): scope attention, the dynamic position encoding, patch merging and expanding.

Token tensors are channels-last, ``(B, D, H, W, C)``. Every block takes the *real extent*
``(d, h, w)`` of its token grid: the model pads inputs with zeros to a size multiple, and tokens at
``[d:, h:, w:]`` are padding. Padding is handled so that it never changes a real token:

* attention runs on the real tokens only (the token grid is cropped to ``(d, h, w)`` before
  :func:`medattn.kernels.blocked_attention3d`, whose ragged windows never attend outside the grid);
* every op that can make a padded token non-zero is followed by :func:`mask_padding`, so the
  convolutions (position encoding, merging, decoder convs) see exact zeros there, as they would see
  their own zero padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medattn import kernels
from medattn.kernels.spec import Partition, bias_table_size

Extent = tuple[int, int, int]


def mask_padding(x: torch.Tensor, extent: Extent) -> torch.Tensor:
    """Zero the padded tokens of ``x`` (B, D, H, W, C): everything outside ``[:d, :h, :w]``."""
    d, h, w = extent
    if tuple(x.shape[1:4]) == (d, h, w):
        return x
    out = torch.zeros_like(x)
    out[:, :d, :h, :w] = x[:, :d, :h, :w]
    return out


def coarser(extent: Extent, factor: int = 2) -> Extent:
    """Real extent after a stride-``factor`` downsampling: ``ceil(n / factor)`` per axis."""
    return (math.ceil(extent[0] / factor), math.ceil(extent[1] / factor), math.ceil(extent[2] / factor))


class ScopeAttention(nn.Module):
    """Multi-head self-attention inside a local scope (3-D windows) or a dilated scope (3-D groups).

    * ``dilation is None``: local scope, tokens attend within non-overlapping ``window`` cubes;
    * ``dilation = (sd, sh, sw)``: dilated scope, a group gathers every ``s``-th token, so with
      ``s = ceil(n / window)`` (``dilation`` entries of 0 ask for exactly that, per input) one group
      of ``window`` tokens per axis spans the whole feature map.

    The op is :func:`medattn.kernels.blocked_attention3d` (Triton on CUDA, reference on CPU), with a
    learned relative-position bias table ``[heads, (2w-1)^3]``.
    Input/output ``(B, D, H, W, C)``; only the ``extent`` region is attended, padding is returned as 0.
    """

    def __init__(self, dim: int, heads: int, window: Extent, dilation: Extent | None) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.window = window
        self.dilation = dilation
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros(heads, bias_table_size(window)))
        nn.init.trunc_normal_(self.bias_table, std=0.02)

    def partition(self, extent: Extent) -> Partition:
        """The kernel partition for a real token grid of size ``extent``."""
        if self.dilation is None:
            return Partition(self.window)
        dil = tuple(s if s > 0 else max(1, math.ceil(n / w)) for s, n, w in zip(self.dilation, extent, self.window))
        return Partition(self.window, dilation=dil)

    def forward(self, x: torch.Tensor, extent: Extent) -> torch.Tensor:
        d, h, w = extent
        b, c = x.shape[0], x.shape[-1]
        real = x[:, :d, :h, :w]
        qkv = self.qkv(real).reshape(b, d, h, w, 3, self.heads, self.head_dim)
        q, k, v = (qkv[:, :, :, :, i] for i in range(3))
        o = kernels.blocked_attention3d(q, k, v, self.partition(extent), self.bias_table.to(q.dtype))
        o = self.proj(o.reshape(b, d, h, w, c))
        if o.shape[1:4] == x.shape[1:4]:
            return o
        return F.pad(o, (0, 0, 0, x.shape[3] - w, 0, x.shape[2] - h, 0, x.shape[1] - d))


class DFormerBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))`` then ``x + MLP(LN(x))`` (GELU, ratio ``mlp_ratio``).

    Input/output ``(B, D, H, W, C)``; padded tokens are zero on output.
    """

    def __init__(self, dim: int, heads: int, window: Extent, dilation: Extent | None, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ScopeAttention(dim, heads, window, dilation)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, extent: Extent) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), extent)
        return mask_padding(x + self.mlp(self.norm2(x)), extent)


class DynamicPositionEncoding(nn.Module):
    """D-Former's dynamic position encoding: ``x + DWConv3x3x3(x)`` (depthwise, zero padding).

    Input/output ``(B, D, H, W, C)``; padded tokens are zero on output.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, extent: Extent) -> torch.Tensor:
        pe = self.conv(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        return mask_padding(x + pe, extent)


class Stage(nn.Module):
    """Position encoding then ``depth`` blocks alternating local (even) and dilated (odd) scope.

    Input/output ``(B, D, H, W, C)``.
    """

    def __init__(self, dim: int, heads: int, depth: int, window: Extent, dilation: Extent,
                 mlp_ratio: float) -> None:
        super().__init__()
        self.pos = DynamicPositionEncoding(dim)
        self.blocks = nn.ModuleList(
            DFormerBlock(dim, heads, window, None if i % 2 == 0 else dilation, mlp_ratio) for i in range(depth))

    def forward(self, x: torch.Tensor, extent: Extent) -> torch.Tensor:
        x = self.pos(x, extent)
        for blk in self.blocks:
            x = blk(x, extent)
        return x


class PatchMerging(nn.Module):
    """Downsample x2: LayerNorm, then a 2x2x2 stride-2 conv ``C -> C_out`` (a linear map of the 8
    merged tokens). ``(B, D, H, W, C) -> (B, D/2, H/2, W/2, C_out)``; D, H, W must be even."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.reduce = nn.Conv3d(dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, extent: Extent) -> torch.Tensor:
        x = mask_padding(self.norm(x), extent)
        y = self.reduce(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        return mask_padding(y, coarser(extent))


class PatchExpanding(nn.Module):
    """Upsample x2: a 2x2x2 stride-2 transposed conv ``C -> C_out`` then LayerNorm.
    ``(B, D, H, W, C) -> (B, 2D, 2H, 2W, C_out)``; ``extent`` is the real extent of the output."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.expand = nn.ConvTranspose3d(dim, out_dim, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, extent: Extent) -> torch.Tensor:
        y = self.expand(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        return mask_padding(self.norm(y), extent)
