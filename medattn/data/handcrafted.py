"""The built-in ``handcrafted`` patch encoder: colour and texture statistics, no weights.

Every statistic is computed for a whole batch at once in torch (``[B, 3, H, W]`` → ``[B, 70]``); the
names of the 70 values are in :data:`FEATURE_NAMES`, in order:

- RGB, per channel: mean, std, 10th/50th/90th percentile (15);
- HSV: saturation-weighted circular mean of hue (cos, sin), and mean, std, 10th/50th/90th percentile
  of saturation and value (12);
- optical density ``-log10((255 I + 1) / 256)``, per channel: mean, std (6);
- hematoxylin / eosin / DAB by colour deconvolution (Ruifrok & Johnston, the matrix and clipping of
  ``skimage.color.rgb2hed``): mean, std, 10th/50th/90th percentile of H and E, mean and std of DAB (12);
- Sobel gradient magnitude of the grey image: mean, std, median, 90th percentile, edge density
  (fraction above 0.1) (5);
- texture: mean |Laplacian|; GLCM-style contrast (mean squared grey difference) at distances 1, 2, 4;
  neighbour correlation at distances 1 and 4; a rotation-invariant local-binary-pattern histogram
  (how many of the 8 neighbours are brighter than the centre, 9 bins); mean |Gabor response| at
  0°, 45°, 90°, 135° (wavelength 8 px: 4 px on the 2× average-pooled grey image); grey-level
  entropy (16 bins, bits) (20).

A uniform patch has zero for every texture value (and all its LBP mass in bin 0). Percentiles are
nearest-rank: exact over all pixels for RGB (a 256-bin histogram, 8-bit inputs), over every fourth row
and column for saturation, value, H, E and the gradient (a 16th of the sorting cost).

Speed: on CPU the batch is processed in chunks of :data:`CHUNK` patches, whose intermediate arrays stay in
CPU caches (a 64-patch batch at once is ~2× slower per patch on CPU); the encoder is cheap to copy, so
feature extraction runs it inside the DataLoader workers on CPU (``encode_in_workers``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb
from torch import Tensor

from medattn.data.encoders import PatchEncoder

_Q = (0.1, 0.5, 0.9)
CHUNK = 4  #: patches per vectorised pass (cache-sized)
_STATS = ("mean", "std", "p10", "p50", "p90")


def _names() -> list[str]:
    names = [f"rgb_{c}_{s}" for c in "rgb" for s in _STATS]
    names += ["hue_cos", "hue_sin"] + [f"{c}_{s}" for c in ("sat", "val") for s in _STATS]
    names += [f"od_{c}_{s}" for c in "rgb" for s in ("mean", "std")]
    names += [f"{c}_{s}" for c in ("hema", "eosin") for s in _STATS] + ["dab_mean", "dab_std"]
    names += ["grad_mean", "grad_std", "grad_p50", "grad_p90", "edge_density"]
    names += ["laplacian_abs_mean"] + [f"contrast_d{d}" for d in (1, 2, 4)] + ["corr_d1", "corr_d4"]
    names += [f"lbp_{k}" for k in range(9)] + [f"gabor_{a}" for a in (0, 45, 90, 135)] + ["grey_entropy"]
    return names


FEATURE_NAMES: tuple[str, ...] = tuple(_names())


def _histogram(values: Tensor, n_bins: int) -> Tensor:
    """``[B, P]`` integer bin indices in ``[0, n_bins)`` → ``[B, n_bins]`` counts."""
    offsets = torch.arange(values.shape[0], device=values.device)[:, None] * n_bins
    return torch.bincount((values + offsets).flatten(), minlength=values.shape[0] * n_bins).view(-1, n_bins)


def _mean_std(x: Tensor) -> Tensor:
    """``[..., P]`` → ``[..., 2]``: mean and (population) standard deviation."""
    mean = x.mean(-1, keepdim=True)
    return torch.cat([mean, (x - mean).pow(2).mean(-1, keepdim=True).sqrt()], -1)


def _stats_unit(x: Tensor) -> Tensor:
    """``[B, K, P]`` values in [0, 1] on the 1/255 grid (8-bit colours) → ``[B, K, 5]``: mean, std,
    10th/50th/90th percentile (nearest rank, exact for 8-bit inputs, via a 256-bin histogram)."""
    b, k, n = x.shape
    counts = _histogram((x * 255.0).round().long().clamp(0, 255).reshape(b * k, n), 256)
    ranks = torch.tensor([round(q * (n - 1)) for q in _Q], device=x.device, dtype=counts.dtype)
    idx = torch.searchsorted(counts.cumsum(-1), ranks.expand(b * k, -1).contiguous(), right=True)
    return torch.cat([_mean_std(x), (idx.float() / 255.0).view(b, k, -1)], -1)


def _stats_any(x: Tensor) -> Tensor:
    """``[B, K, H, W]`` → ``[B, K, 5]``: mean, std (all pixels), 10th/50th/90th percentile (nearest
    rank over every fourth row and column: a 16th of the sorting cost, still 4,096 samples at 256 px)."""
    sub = x[..., ::4, ::4].flatten(2)
    srt = sub.sort(dim=-1).values
    n = sub.shape[-1]
    idx = torch.tensor([round(q * (n - 1)) for q in _Q], device=x.device)
    return torch.cat([_mean_std(x.flatten(2)), srt.index_select(-1, idx)], -1)


def _hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, 3, H, W]`` → hue in [0, 1), saturation, value, each ``[B, H, W]``."""
    r, g, b = rgb.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)  # element-wise: much faster than a reduction over dim 1
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(r == maxc, ((g - b) / safe) % 6, torch.where(g == maxc, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return hue, sat, maxc


def _gabor_bank(wavelength: float = 4.0, sigma: float = 1.5, size: int = 7) -> Tensor:
    """Zero-mean real Gabor kernels at 0/45/90/135 degrees, ``[4, 1, size, size]``."""
    ax = torch.arange(size, dtype=torch.float32) - size // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    kernels = []
    for deg in (0, 45, 90, 135):
        t = math.radians(deg)
        xr = xx * math.cos(t) + yy * math.sin(t)
        k = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2)) * torch.cos(2 * math.pi * xr / wavelength)
        k = k - k.mean()
        kernels.append(k / k.abs().sum())
    return torch.stack(kernels)[:, None]


def _shift_pairs(grey: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Horizontal and vertical neighbour pairs at distance ``d`` (flattened ``[B, P]`` each)."""
    return (grey[:, :, :-d].flatten(1), grey[:, :, d:].flatten(1), grey[:, :-d, :].flatten(1),
            grey[:, d:, :].flatten(1))


def _correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per row of ``[B, P]`` pairs; 0 where a side is constant (float noise aside)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = (a.pow(2).mean(1) * b.pow(2).mean(1)).sqrt()
    return torch.where(den > 1e-12, (a * b).mean(1) / den.clamp_min(1e-12), torch.zeros_like(den))


class HandcraftedEncoder(PatchEncoder):
    """Colour and texture statistics of each patch (see the module docstring), ``[B, 70]`` float32."""

    name = "handcrafted"
    version = "1.0"
    dim = len(FEATURE_NAMES)
    encode_in_workers = True  #: no weights: feature extraction may run copies in its CPU workers

    def __init__(self) -> None:
        super().__init__()
        self.feature_names = FEATURE_NAMES
        self.register_buffer("hed", torch.tensor(hed_from_rgb, dtype=torch.float32), persistent=False)
        self.register_buffer("gabor", _gabor_bank(), persistent=False)

    @torch.no_grad()
    def forward(self, patches: Tensor) -> Tensor:
        """``[B, 3, H, W]`` float in ``[0, 1]`` (H, W >= 16) → ``[B, 70]`` float32."""
        if patches.device.type == "cpu" and patches.shape[0] > CHUNK:  # on a GPU the whole batch at once
            return torch.cat([self._features(c) for c in patches.split(CHUNK)])
        return self._features(patches)

    def _features(self, patches: Tensor) -> Tensor:
        x = patches.float().clamp(0.0, 1.0).contiguous()
        bsz = x.shape[0]
        h, w = x.shape[-2:]
        flat = x.flatten(2)  # [B, 3, P]
        out = [_stats_unit(flat).flatten(1)]  # RGB: 15

        hue, sat, val = _hsv(x)
        wgt = sat.flatten(1)
        ang = 2 * math.pi * hue.flatten(1)
        wsum = wgt.sum(1) + 1e-8
        out += [((wgt * ang.cos()).sum(1) / wsum)[:, None], ((wgt * ang.sin()).sum(1) / wsum)[:, None]]
        out.append(_stats_any(torch.stack([sat, val], 1)).flatten(1))  # 10

        od = -torch.log10((flat * 255.0 + 1.0) / 256.0)
        out.append(_mean_std(od).flatten(1))  # 6

        # colour deconvolution exactly as skimage.color.rgb2hed: [B, P, 3] @ [3, 3]
        logs = torch.log(flat.clamp_min(1e-6)) / math.log(1e-6)
        hed = (logs.transpose(1, 2) @ self.hed).clamp_min(0.0).transpose(1, 2)  # [B, 3, P]
        out.append(_stats_any(hed[:, :2].reshape(bsz, 2, h, w)).flatten(1))  # 10
        out.append(_mean_std(hed[:, 2]))  # 2

        grey = (0.2125 * x[:, 0] + 0.7154 * x[:, 1] + 0.0721 * x[:, 2])  # [B, H, W], skimage's rgb2gray
        g4 = F.pad(grey[:, None], (1, 1, 1, 1), mode="replicate")
        p = g4[:, 0]  # [B, H + 2, W + 2]; 3×3 stencils by shifted slices (faster than 1-channel conv2d)
        dx, dy = p[:, :, 2:] - p[:, :, :-2], p[:, 2:, :] - p[:, :-2, :]
        gx = (dx[:, :-2] + 2 * dx[:, 1:-1] + dx[:, 2:]) / 8.0  # Sobel, normalised to a unit step
        gy = (dy[:, :, :-2] + 2 * dy[:, :, 1:-1] + dy[:, :, 2:]) / 8.0
        mag = (gx.pow(2) + gy.pow(2)).sqrt()  # [B, H, W]
        gs = _stats_any(mag[:, None])[:, 0]
        mag = mag.flatten(1)
        out.append(torch.stack([gs[:, 0], gs[:, 1], gs[:, 3], gs[:, 4], (mag > 0.1).float().mean(1)], 1))  # 5

        lap = p[:, 1:-1, :-2] + p[:, 1:-1, 2:] + p[:, :-2, 1:-1] + p[:, 2:, 1:-1] - 4 * grey
        out.append(lap.abs().flatten(1).mean(1, keepdim=True))
        contrast = []
        for d in (1, 2, 4):
            ah, bh, av, bv = _shift_pairs(grey, d)
            contrast.append(0.5 * ((ah - bh).pow(2).mean(1) + (av - bv).pow(2).mean(1)))
        out.append(torch.stack(contrast, 1))
        corr = []
        for d in (1, 4):
            ah, bh, av, bv = _shift_pairs(grey, d)
            corr.append(0.5 * (_correlation(ah, bh) + _correlation(av, bv)))
        out.append(torch.stack(corr, 1))

        centre = grey + 1.0 / 512  # brighter by more than half a grey level
        brighter = torch.zeros((bsz, h, w), dtype=torch.uint8, device=x.device)  # 0..8 brighter neighbours
        for dy, dx in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)):
            brighter += p[:, dy:dy + h, dx:dx + w] > centre
        brighter = brighter.flatten(1).long()  # [B, P]
        out.append(_histogram(brighter, 9).float() / brighter.shape[1])  # 9

        half = self.gabor.shape[-1] // 2
        small = F.avg_pool2d(grey[:, None], 2)  # the bank runs at half resolution (a quarter of the cost)
        gab = F.conv2d(F.pad(small, (half,) * 4, mode="reflect"), self.gabor)
        out.append(gab.abs().flatten(2).mean(-1))  # 4

        bins = (grey.flatten(1) * 16).long().clamp(0, 15)
        p = _histogram(bins, 16).float() / bins.shape[1]
        out.append((-(p * torch.log2(p.clamp_min(1e-12))).sum(1, keepdim=True)).clamp_min(0.0))
        return torch.cat(out, 1).float()
