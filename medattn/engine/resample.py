"""Resampling between voxel grids given their affines (the inverse of preprocessing).

Predictions are made on the preprocessed (reoriented, resampled) grid. To write them in the input's
geometry, every voxel of the input grid is mapped through the two affines to a continuous index of
the prediction grid and sampled there: linearly for probabilities, nearest for labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _nd(affine: np.ndarray | torch.Tensor, nd: int) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape[0] == nd + 1:
        return a
    out = np.eye(nd + 1)
    out[:nd, :nd] = a[:nd, :nd]
    out[:nd, nd] = a[:nd, -1]
    return out


def resample_to_grid(data: torch.Tensor, src_affine: np.ndarray | torch.Tensor,
                     dst_affine: np.ndarray | torch.Tensor, dst_shape: tuple[int, ...],
                     mode: str = "bilinear", chunk_voxels: int = 8_000_000) -> torch.Tensor:
    """Resample ``data`` from its grid onto another grid of the same physical space.

    Args:
        data: (C, *src_spatial) tensor on the source grid (2-D or 3-D).
        src_affine: affine (index → mm) of the source grid; 4×4 (or (D+1)×(D+1)).
        dst_affine: affine of the destination grid, same convention.
        dst_shape: destination spatial shape.
        mode: "bilinear" (trilinear in 3-D) or "nearest".

    Returns:
        (C, *dst_shape) tensor. Destination voxels outside the source grid take the nearest edge value.
    """
    nd = data.ndim - 1
    src = _nd(src_affine, nd)
    dst = _nd(dst_affine, nd)
    xform_np = np.linalg.inv(src) @ dst  # destination index → source index
    if tuple(dst_shape) == tuple(data.shape[1:]) and np.allclose(xform_np, np.eye(nd + 1), atol=1e-6):
        return data.clone()  # same grid: nothing to interpolate
    xform = torch.as_tensor(xform_np, dtype=torch.float64)
    src_shape = torch.tensor(data.shape[1:], dtype=torch.float64)
    out = torch.empty((data.shape[0], *dst_shape), dtype=data.dtype, device=data.device)
    flat = out.view(data.shape[0], -1)
    n = int(np.prod(dst_shape))
    src_in = data.unsqueeze(0).to(torch.float32)
    strides = np.cumprod([1, *list(dst_shape)[::-1]])[:-1][::-1].copy()  # C-order strides of dst
    for start in range(0, n, chunk_voxels):
        flat_idx = torch.arange(start, min(n, start + chunk_voxels), dtype=torch.int64)
        part = torch.stack([(flat_idx // int(s)) % int(d) for s, d in zip(strides, dst_shape)], dim=1)
        homo = torch.cat([part.to(torch.float64), torch.ones(len(part), 1, dtype=torch.float64)], dim=1)
        src_idx = (homo @ xform.T)[:, :nd]
        # grid_sample (align_corners=True): -1 and 1 are the centres of the first and last voxels;
        # its last grid coordinate indexes the LAST tensor dimension, hence the flip.
        norm = 2.0 * src_idx / (src_shape - 1).clamp(min=1) - 1.0
        grid = norm.flip(-1).to(torch.float32).to(data.device)
        grid = grid.view(1, *([1] * (nd - 1)), len(part), nd)
        sampled = F.grid_sample(src_in, grid, mode="nearest" if mode == "nearest" else "bilinear",
                                padding_mode="border", align_corners=True)
        flat[:, start:start + len(part)] = sampled.reshape(data.shape[0], -1).to(data.dtype)
    return out
