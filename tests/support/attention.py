"""An independent, dense oracle of blocked 3-D attention (test helper).

It does not share code with ``medattn.kernels``: for every token it computes its group, window,
in-window position and wrapped flag from the token's own coordinates (the inverse of the kernels'
slot -> token tables), builds the full ``N x N`` allowed-pair mask and bias, and runs dense softmax
attention. Tiny grids only (``N x N`` memory).
"""

from __future__ import annotations

import math

import torch


def _axis_keys(n: int, w: int, s: int, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per coordinate 0..n-1: (block key, in-window position, wrapped flag)."""
    i = torch.arange(n)
    g, c = i % s, i // s
    n_g = (n - g + s - 1) // s
    shift = t % n_g
    p = (c - shift) % n_g  # rolled position: p holds c = (p + shift) mod n_g
    window = p // w
    wrapped = (p >= n_g - shift) & (shift > 0)
    return g * n + window, p % w, wrapped


def naive_blocked_attention3d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window, dilation=None, shift=None,
                              bias_table: torch.Tensor | None = None) -> torch.Tensor:
    """Dense masked attention; q, k, v ``[B, D, H, W, heads, hd]`` -> same shape (computed in float64)."""
    B, D, H, W, heads, hd = q.shape
    dilation = dilation or (1, 1, 1)
    shift = shift or (0, 0, 0)
    keys = [_axis_keys(n, w, s, t) for n, w, s, t in zip((D, H, W), window, dilation, shift)]
    grid = torch.meshgrid(torch.arange(D), torch.arange(H), torch.arange(W), indexing="ij")
    block = [keys[a][0][grid[a]].reshape(-1) for a in range(3)]
    pos = [keys[a][1][grid[a]].reshape(-1) for a in range(3)]
    wrap = [keys[a][2][grid[a]].reshape(-1) for a in range(3)]
    allowed = torch.ones(D * H * W, D * H * W, dtype=torch.bool)
    for a in range(3):
        allowed &= (block[a][:, None] == block[a][None, :]) & (wrap[a][:, None] == wrap[a][None, :])
    qf, kf, vf = (x.reshape(B, D * H * W, heads, hd).transpose(1, 2).double() for x in (q, k, v))
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(hd)
    if bias_table is not None:
        _, wh, ww = window
        delta = [pos[a][:, None] - pos[a][None, :] + window[a] - 1 for a in range(3)]
        rel = (delta[0] * (2 * wh - 1) + delta[1]) * (2 * ww - 1) + delta[2]
        rel = rel.clamp(0, bias_table.shape[1] - 1)  # pairs that are not allowed are masked anyway
        scores = scores + bias_table.double()[:, rel]
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ vf
    return out.transpose(1, 2).reshape(B, D, H, W, heads, hd)
