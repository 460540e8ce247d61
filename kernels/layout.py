"""Per-axis block layout: which token sits in which slot of which block (see :mod:`.spec`).

Blocks are separable: a 3-D block is one *axis block* (a (group, window) pair) per axis, and a slot
is one in-window position per axis. So the whole layout is described by three small tables per axis,
``O(D + H + W)`` entries in total, from which both backends compute token addresses, the padding mask
and the shifted-window mask arithmetically. Nothing of size ``N`` or ``N x window`` is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .spec import Partition

__all__ = ["AxisLayout", "axis_layout", "grid_layout"]


@dataclass(frozen=True)
class AxisLayout:
    """One axis cut into axis blocks.

    Attributes:
        coord: ``[n_blocks, w]`` int32, the token coordinate (0..n-1) held by each slot, -1 for padding.
        wrapped: ``[n_blocks, w]`` int32, 1 where the slot holds a token wrapped around by the shift.
    """

    coord: torch.Tensor
    wrapped: torch.Tensor

    @property
    def n_blocks(self) -> int:
        return int(self.coord.shape[0])


@lru_cache(maxsize=256)
def _axis_lists(n: int, w: int, s: int, t: int) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    coords: list[tuple[int, ...]] = []
    wraps: list[tuple[int, ...]] = []
    for g in range(min(s, n)):
        n_g = len(range(g, n, s))
        shift = t % n_g
        for j in range(-(-n_g // w)):
            row_c, row_w = [], []
            for r in range(w):
                p = j * w + r
                if p < n_g:
                    row_c.append(g + ((p + shift) % n_g) * s)
                    row_w.append(1 if p >= n_g - shift and shift > 0 else 0)
                else:
                    row_c.append(-1)
                    row_w.append(0)
            coords.append(tuple(row_c))
            wraps.append(tuple(row_w))
    return tuple(coords), tuple(wraps)


def axis_layout(n: int, w: int, s: int, t: int, device: torch.device | str = "cpu") -> AxisLayout:
    """Layout of one axis of extent ``n`` with window ``w``, dilation ``s`` and shift ``t``."""
    coords, wraps = _axis_lists(n, w, s, t)
    return AxisLayout(torch.tensor(coords, dtype=torch.int32, device=device),
                      torch.tensor(wraps, dtype=torch.int32, device=device))


@lru_cache(maxsize=64)
def grid_layout(spatial: tuple[int, int, int], partition: Partition,
                device: torch.device | str = "cpu") -> tuple[AxisLayout, AxisLayout, AxisLayout]:
    """The three axis layouts of a ``(D, H, W)`` grid (cached); blocks are ordered ``(bd, bh, bw)`` row-major."""
    return tuple(  # type: ignore[return-value]
        axis_layout(n, w, s, t, device)
        for n, w, s, t in zip(spatial, partition.window, partition.strides, partition.shifts)
    )
