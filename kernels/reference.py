"""Pure-PyTorch blocked 3-D attention: the CPU path and the test oracle of the Triton kernels.

It computes exactly the function documented in :mod:`medattn.kernels.spec`: gather the tokens of every
block (one gather with a cached index), attend inside blocks with one batched matmul, a bias and mask
add and a softmax in fp32 (float64 stays float64), and gather the result back to token order. It is
differentiable with respect to q, k, v and the bias table (autograd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from .layout import grid_layout
from .spec import Partition, check_inputs

__all__ = ["BlockIndex", "block_index", "reference_blocked_attention3d", "relative_index"]


@dataclass(frozen=True)
class BlockIndex:
    """Gather/scatter indices of one (grid, partition).

    Attributes:
        gather: ``[n_blocks * T]`` int64, token index (into ``D*H*W``) of every slot, 0 for padding.
        scatter: ``[D*H*W]`` int64, the slot of every token.
        mask: ``[n_blocks, 1, T, T]`` float32 additive mask (0 allowed, -inf not), or None when every
            slot of every block may attend to every other (no padding, no shift).
        n_blocks: number of blocks.
    """

    gather: torch.Tensor
    scatter: torch.Tensor
    mask: torch.Tensor | None
    n_blocks: int


@lru_cache(maxsize=64)
def block_index(spatial: tuple[int, int, int], partition: Partition, device: torch.device) -> BlockIndex:
    """Build (and cache) the :class:`BlockIndex` of a ``(D, H, W)`` grid."""
    ax = grid_layout(spatial, partition, "cpu")
    _, hh, ww_ = spatial
    cd, ch, cw = (a.coord.long() for a in ax)
    nbd, nbh, nbw = (a.n_blocks for a in ax)
    wd, wh, ww = partition.window
    T = wd * wh * ww
    tok = (cd.view(nbd, 1, 1, wd, 1, 1) * hh + ch.view(1, nbh, 1, 1, wh, 1)) * ww_ + cw.view(1, 1, nbw, 1, 1, ww)
    valid = ((cd.view(nbd, 1, 1, wd, 1, 1) >= 0) & (ch.view(1, nbh, 1, 1, wh, 1) >= 0)
             & (cw.view(1, 1, nbw, 1, 1, ww) >= 0))
    n_blocks = nbd * nbh * nbw
    tok = tok.reshape(n_blocks * T)
    valid = valid.reshape(n_blocks, T)
    flat_valid = valid.reshape(-1)
    scatter = torch.empty(spatial[0] * spatial[1] * spatial[2], dtype=torch.long)
    scatter[tok[flat_valid]] = torch.arange(n_blocks * T)[flat_valid]
    gather = torch.where(flat_valid, tok, torch.zeros_like(tok))

    mask = None
    shifted = any(bool(a.wrapped.any()) for a in ax)
    if shifted or not bool(valid.all()):
        wd_, wh_, ww_w = (a.wrapped for a in ax)
        region = (wd_.view(nbd, 1, 1, wd, 1, 1) * 4 + wh_.view(1, nbh, 1, 1, wh, 1) * 2
                  + ww_w.view(1, 1, nbw, 1, 1, ww)).reshape(n_blocks, T)
        allowed = (region[:, :, None] == region[:, None, :]) & valid[:, None, :]
        # padding query slots are discarded; let them attend everywhere so that no softmax row is empty
        # (an all -inf row would be NaN, and 0 * NaN would leak into the gradients)
        allowed |= ~valid[:, :, None]
        mask = torch.zeros(n_blocks, 1, T, T).masked_fill_(~allowed[:, None], float("-inf"))
        mask = mask.to(device)
    return BlockIndex(gather.to(device), scatter.to(device), mask, n_blocks)


class _ToBlocks(torch.autograd.Function):
    """``x.index_select(1, gather)`` (tokens → block slots) with a gather as its backward.

    Autograd would scatter-add the slot gradients back to tokens. That is not needed: every real token
    sits in exactly one slot, and padding slots always receive exactly zero gradient (their keys have
    probability 0 for real queries, and their query rows are never read back, so dO = 0 there). The
    backward is therefore one ``index_select`` through the inverse map, without accumulation.
    """

    @staticmethod
    def forward(ctx, x, gather, scatter):  # type: ignore[override]
        ctx.save_for_backward(scatter)
        return x.index_select(1, gather)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (scatter,) = ctx.saved_tensors
        return grad.index_select(1, scatter), None, None


class _ToTokens(torch.autograd.Function):
    """``x.index_select(1, scatter)`` (block slots → tokens) whose backward copies instead of adding.

    ``scatter`` names each slot at most once, so the gradient of the slots is a plain (non-accumulating)
    ``index_copy`` into zeros; padding slots get exactly zero.
    """

    @staticmethod
    def forward(ctx, x, scatter):  # type: ignore[override]
        ctx.save_for_backward(scatter)
        ctx.n_slots = x.shape[1]
        return x.index_select(1, scatter)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (scatter,) = ctx.saved_tensors
        shape = (grad.shape[0], ctx.n_slots, *grad.shape[2:])
        return grad.new_zeros(shape).index_copy_(1, scatter, grad), None


@lru_cache(maxsize=64)
def relative_index(window: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """``[T, T]`` int64: bias-table entry of every (query slot, key slot) pair of a block."""
    wd, wh, ww = window
    r = torch.arange(wd * wh * ww)
    rd, rh, rw = r // (wh * ww), (r // ww) % wh, r % ww
    dd = rd[:, None] - rd[None, :] + wd - 1
    dh = rh[:, None] - rh[None, :] + wh - 1
    dw = rw[:, None] - rw[None, :] + ww - 1
    return ((dd * (2 * wh - 1) + dh) * (2 * ww - 1) + dw).to(device)


def reference_blocked_attention3d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                                  bias_table: torch.Tensor | None = None) -> torch.Tensor:
    """Blocked 3-D attention in plain PyTorch (see :mod:`medattn.kernels.spec` for the semantics).

    Args:
        q, k, v: ``[B, D, H, W, heads, head_dim]``.
        partition: windows, dilation and shift.
        bias_table: ``[heads, (2wd-1)(2wh-1)(2ww-1)]`` relative-position bias, or None.

    Returns:
        ``[B, D, H, W, heads, head_dim]`` in q's dtype (computed in fp32, or float64 for float64 input).

    Raises:
        ValueError: unsupported dtype, head_dim or shapes (see :func:`~medattn.kernels.spec.check_inputs`).
    """
    check_inputs(q, k, v, partition, bias_table, allow_float64=True)
    B, D, H, W, heads, hd = q.shape
    T = partition.block_size
    idx = block_index((D, H, W), partition, q.device)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32

    def blocks(x: torch.Tensor) -> torch.Tensor:  # [B, D, H, W, heads, hd] -> [B, nb, heads, T, hd]
        x = _ToBlocks.apply(x.reshape(B, D * H * W, heads, hd), idx.gather, idx.scatter)
        return x.view(B, idx.n_blocks, T, heads, hd).transpose(2, 3).to(compute)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    scores = torch.matmul(qb * (1.0 / math.sqrt(hd)), kb.transpose(-1, -2))  # [B, nb, heads, T, T]
    if bias_table is not None:
        scores = scores + bias_table.to(compute)[:, relative_index(partition.window, q.device)]
    if idx.mask is not None:
        scores = scores + idx.mask.to(compute)
    out = torch.matmul(torch.softmax(scores, dim=-1), vb)  # [B, nb, heads, T, hd]
    out = _ToTokens.apply(out.transpose(2, 3).reshape(B, idx.n_blocks * T, heads, hd), idx.scatter)
    return out.view(B, D, H, W, heads, hd).to(q.dtype)
