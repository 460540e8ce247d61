"""D-Former: a U-shaped dilated transformer for 3-D segmentation (Wu et al., "D-Former: A U-shaped
Dilated Transformer for 3D Medical Image Segmentation", Neural Comput. Appl. 2023).

Layout (tensors inside the transformer are channels-last ``(B, D, H, W, C)``; see
:mod:`.dformer_blocks`):

* **Stem**: a 3x3x3 conv ``C_in -> embed_dim / 2`` at full resolution (the last skip connection).
* **Patch embedding**: a ``patch``-strided conv ``C_in -> embed_dim``, then LayerNorm.
* **Encoder**: ``len(depths)`` stages at ``1 / (patch * 2**i)`` of the input resolution with
  ``embed_dim * 2**i`` channels and ``heads[i]`` heads; each stage is a dynamic position encoding
  (depthwise 3x3x3 conv) then ``depths[i]`` blocks alternating local scope (``window`` cubes) and
  dilated scope (groups of ``window`` tokens at stride ``dilations[i]``; 0 = ``ceil(n / window)``,
  so one group spans the whole feature map, as in the paper). Stages are joined by patch merging.
* **Decoder**: for stage ``i = S-2 .. 0``: patch expanding, concatenation with the encoder output of
  stage ``i`` (skip), a linear fuse ``2C -> C``, then a stage with the same depth as the encoder's.
* **Head**: transposed conv back to full resolution, concatenation with the stem, a 3x3x3 conv
  (LeakyReLU) and a 1x1x1 conv to ``out_channels`` logits.

Any input size works: the input is zero-padded at the high end to a multiple of
:attr:`DFormer.size_multiple` (``patch * 2**(S-1)``) and the logits are cropped back. Padded tokens
are kept at zero and never attended to, so the logits on real voxels do not depend on how much
padding was added (``pad_multiple`` can be raised to check it). There are no batch/instance norms
and no buffers updated in ``forward``: no state changes, eval mode is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medattn.kernels.spec import HEAD_DIMS
from medattn.models.dformer_blocks import Extent, PatchExpanding, PatchMerging, Stage, coarser, mask_padding
from medattn.models.registry import register_model

#: Named sizes. ``base`` follows the paper's scale (~44 M parameters, see ``parameter_count``).
PRESETS: dict[str, dict] = {
    "tiny": {"embed_dim": 32, "depths": (2, 2, 2), "heads": (2, 4, 8), "window": 4},
    "base": {"embed_dim": 96, "depths": (2, 2, 6, 2), "heads": (3, 6, 12, 24), "window": 4},
}


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 4, 1)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 4, 1, 2, 3)


@register_model("dformer")
class DFormer(nn.Module):
    """D-Former for 3-D segmentation.

    Args:
        spatial_dims: must be 3.
        in_channels: input channels C_in.
        out_channels: number of classes K.
        preset: ``"tiny"`` or ``"base"``; the arguments below left at None take the preset's value.
        embed_dim: channels of the first stage C (stage i has ``C * 2**i``); even.
        depths: blocks per encoder stage (and per decoder stage); each >= 1.
        heads: attention heads per stage; ``C * 2**i / heads[i]`` must be a kernel head size
            (16, 32, 64 or 128).
        window: local window / dilated group size in tokens (cube edge).
        dilations: dilated-scope stride per stage; 0 = ``ceil(n / window)`` for an n-token map.
        patch: patch-embedding stride (2 or 4).
        mlp_ratio: MLP hidden width / C.

    ``forward(x)`` with x (B, C_in, D, H, W) of any size returns logits (B, K, D, H, W).
    """

    pad_multiple: int | None = None  # None = size_multiple; a larger multiple of it adds more padding

    def __init__(self, *, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 preset: str = "tiny", embed_dim: int | None = None, depths: tuple[int, ...] | None = None,
                 heads: tuple[int, ...] | None = None, window: int | None = None,
                 dilations: tuple[int, ...] | None = None, patch: int = 2, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r}: expected one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
        embed_dim = int(p["embed_dim"] if embed_dim is None else embed_dim)
        depths = tuple(int(v) for v in (p["depths"] if depths is None else depths))
        heads = tuple(int(v) for v in (p["heads"] if heads is None else heads))
        window = int(p["window"] if window is None else window)
        dilations = tuple(int(v) for v in ((0,) * len(depths) if dilations is None else dilations))
        self._check(spatial_dims, in_channels, out_channels, embed_dim, depths, heads, window, dilations, patch,
                    mlp_ratio)
        self.spatial_dims = 3
        self.depths, self.heads, self.window, self.dilations = depths, heads, window, dilations
        self.patch = patch
        dims = [embed_dim * 2**i for i in range(len(depths))]
        stem_dim = embed_dim // 2
        win = (window, window, window)

        self.stem = nn.Sequential(nn.Conv3d(in_channels, stem_dim, 3, padding=1), nn.LeakyReLU(0.01))
        self.embed = nn.Conv3d(in_channels, embed_dim, kernel_size=patch, stride=patch)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.encoder = nn.ModuleList(
            Stage(dims[i], heads[i], depths[i], win, (dilations[i],) * 3, mlp_ratio) for i in range(len(depths)))
        self.merge = nn.ModuleList(PatchMerging(dims[i], dims[i + 1]) for i in range(len(depths) - 1))
        # decoder index i works at stage i's resolution (i = 0 .. S-2)
        self.expand = nn.ModuleList(PatchExpanding(dims[i + 1], dims[i]) for i in range(len(depths) - 1))
        self.fuse = nn.ModuleList(nn.Linear(2 * dims[i], dims[i]) for i in range(len(depths) - 1))
        self.decoder = nn.ModuleList(
            Stage(dims[i], heads[i], depths[i], win, (dilations[i],) * 3, mlp_ratio) for i in range(len(depths) - 1))
        self.out_norm = nn.LayerNorm(embed_dim)
        self.up = nn.ConvTranspose3d(embed_dim, stem_dim, kernel_size=patch, stride=patch)
        self.head = nn.Sequential(nn.Conv3d(2 * stem_dim, stem_dim, 3, padding=1), nn.LeakyReLU(0.01),
                                  nn.Conv3d(stem_dim, out_channels, 1))
        self.apply(self._init_weights)

    @staticmethod
    def _check(spatial_dims: int, in_channels: int, out_channels: int, embed_dim: int, depths: tuple[int, ...],
               heads: tuple[int, ...], window: int, dilations: tuple[int, ...], patch: int, mlp_ratio: float) -> None:
        if spatial_dims != 3:
            raise ValueError(f"spatial_dims={spatial_dims}: D-Former is 3-D only")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim={embed_dim}: must be an even number >= 2")
        if not depths or min(depths) < 1:
            raise ValueError(f"depths={list(depths)}: need at least one stage, each with >= 1 block")
        if len(heads) != len(depths) or len(dilations) != len(depths):
            raise ValueError(f"heads={list(heads)} and dilations={list(dilations)} need one entry per stage "
                             f"(depths has {len(depths)})")
        for i, h in enumerate(heads):
            dim = embed_dim * 2**i
            if h < 1 or dim % h:
                raise ValueError(f"heads[{i}]={h} does not divide the stage-{i} dim {dim}")
            if dim // h not in HEAD_DIMS:
                raise ValueError(f"stage {i}: head size {dim}/{h}={dim // h} is not supported by the attention "
                                 f"kernel (one of {', '.join(map(str, HEAD_DIMS))})")
        if window < 1:
            raise ValueError(f"window={window}: must be >= 1")
        if min(dilations) < 0:
            raise ValueError(f"dilations={list(dilations)}: entries must be >= 1, or 0 for 'whole feature map'")
        if patch not in (2, 4):
            raise ValueError(f"patch={patch}: must be 2 or 4")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio={mlp_ratio}: must be > 0")

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m.groups == 1:
            nn.init.kaiming_normal_(m.weight, a=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def size_multiple(self) -> int:
        """Inputs are padded internally to a multiple of this (``patch * 2 ** (stages - 1)``)."""
        return self.patch * 2 ** (len(self.depths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` (B, C_in, D, H, W) of any size; returns logits (B, K, D, H, W)."""
        if x.ndim != 5:
            raise ValueError(f"expected a 5-D input (B, C, D, H, W), got shape {tuple(x.shape)}")
        spatial: Extent = (x.shape[2], x.shape[3], x.shape[4])
        m = self.pad_multiple or self.size_multiple
        if m % self.size_multiple:
            raise ValueError(f"pad_multiple={m} is not a multiple of size_multiple={self.size_multiple}")
        extra = [(-n) % m for n in spatial]
        xp = F.pad(x, (0, extra[2], 0, extra[1], 0, extra[0])) if any(extra) else x

        stem = mask_padding(_channels_last(self.stem(xp)), spatial)
        extent = coarser(spatial, self.patch)
        h = mask_padding(self.embed_norm(_channels_last(self.embed(xp))), extent)
        skips: list[tuple[torch.Tensor, Extent]] = []
        for i, stage in enumerate(self.encoder):
            h = stage(h, extent)
            if i < len(self.merge):
                skips.append((h, extent))
                h = self.merge[i](h, extent)
                extent = coarser(extent)
        for i in reversed(range(len(self.decoder))):
            skip, extent = skips[i]
            h = self.expand[i](h, extent)
            h = mask_padding(self.fuse[i](torch.cat([h, skip], dim=-1)), extent)
            h = self.decoder[i](h, extent)
        h = mask_padding(self.out_norm(h), extent)
        up = mask_padding(_channels_last(self.up(_channels_first(h))), spatial)
        logits = self.head(_channels_first(torch.cat([up, stem], dim=-1)))
        return logits[:, :, :spatial[0], :spatial[1], :spatial[2]].contiguous()


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["PRESETS", "DFormer", "parameter_count"]
