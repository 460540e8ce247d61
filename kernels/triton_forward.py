"""Triton forward kernel of blocked 3-D attention (online softmax, fp32 accumulation, saved log-sum-exp).

One program handles ``BLOCK_M`` query slots of one block for one (batch, head) and loops over the key
slots of the same block in tiles of ``BLOCK_N``. Token addresses, the padding mask and the shifted-
window mask are computed from the per-axis tables of :mod:`medattn.kernels.layout` (``O(D+H+W)``
ints) and the strides of q/k/v, so there is no permute, pad or roll pass. The relative-position bias
index is computed arithmetically from the in-window positions. Scores live in registers only.

The saved statistic is ``lse2 = log2(sum_j 2^(s2_j))`` per token and head, where ``s2`` is the score
(``q·k/sqrt(d) + bias``) times ``log2(e)``; layout ``[B, D*H*W, heads]`` float32.

Precision: products are accumulated in fp32. fp16/bf16 inputs feed the tensor cores directly; for
fp32 inputs ``tl.dot`` uses its default input precision, which is TF32 on Ampere and newer GPUs
(IEEE fp32 under the interpreter), as in other fused attention kernels.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .layout import grid_layout
from .spec import Partition

__all__ = ["LOG2E", "Launch", "blocked_attention3d_forward", "make_launch", "new_output", "slots"]

LOG2E = 1.4426950408889634

#: Fill every kernel output with NaN before the kernel writes it (tests set this: unwritten elements show).
POISON_OUTPUTS = False


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer: uninitialised, or NaN-filled when :data:`POISON_OUTPUTS` is set."""
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def slots(offs, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, WD: tl.constexpr, WH: tl.constexpr,
          WW: tl.constexpr):
    """In-window position, token coordinates, validity and wrapped-region id of block slots ``offs``."""
    inb = offs < WD * WH * WW
    rd = offs // (WH * WW)
    rh = (offs // WW) % WH
    rw = offs % WW
    cd = tl.load(CD + blk_d * WD + rd, mask=inb, other=-1)
    ch = tl.load(CH + blk_h * WH + rh, mask=inb, other=-1)
    cw = tl.load(CW + blk_w * WW + rw, mask=inb, other=-1)
    region = (tl.load(RD + blk_d * WD + rd, mask=inb, other=0) * 4
              + tl.load(RH + blk_h * WH + rh, mask=inb, other=0) * 2
              + tl.load(RW + blk_w * WW + rw, mask=inb, other=0))
    valid = inb & (cd >= 0) & (ch >= 0) & (cw >= 0)
    cd = tl.maximum(cd, 0)
    ch = tl.maximum(ch, 0)
    cw = tl.maximum(cw, 0)
    return rd, rh, rw, cd, ch, cw, valid, region


@triton.jit
def _fwd_kernel(Q, K, V, OUT, LSE, BIAS, CD, RD, CH, RH, CW, RW,
                sqb, sqd, sqh, sqw, sqn, skb, skd, skh, skw, skn, svb, svd, svh, svw, svn,
                sob, sod, soh, sow, son,
                H, W, NTOK, NBH, NBW, HEADS, qk_scale,
                WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HD: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr):
    T: tl.constexpr = WD * WH * WW
    TBL: tl.constexpr = (2 * WD - 1) * (2 * WH - 1) * (2 * WW - 1)
    pid_m = tl.program_id(0)
    blk = tl.program_id(1)
    bh = tl.program_id(2)
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    blk_d = blk // (NBH * NBW)
    blk_h = (blk // NBW) % NBH
    blk_w = blk % NBW
    offs_d = tl.arange(0, HD)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rd_m, rh_m, rw_m, cd_m, ch_m, cw_m, valid_m, reg_m = slots(offs_m, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW,
                                                              WD, WH, WW)
    q_off = b * sqb + cd_m * sqd + ch_m * sqh + cw_m * sqw + h * sqn
    q = tl.load(Q + q_off[:, None] + offs_d[None, :], mask=valid_m[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HD], dtype=tl.float32)
    for start_n in range(0, T, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        rd_n, rh_n, rw_n, cd_n, ch_n, cw_n, valid_n, reg_n = slots(offs_n, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW,
                                                                  RW, WD, WH, WW)
        k_off = b * skb + cd_n * skd + ch_n * skh + cw_n * skw + h * skn
        v_off = b * svb + cd_n * svd + ch_n * svh + cw_n * svw + h * svn
        k = tl.load(K + k_off[:, None] + offs_d[None, :], mask=valid_n[:, None], other=0.0)
        v = tl.load(V + v_off[:, None] + offs_d[None, :], mask=valid_n[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        allowed = valid_n[None, :] & (reg_m[:, None] == reg_n[None, :])
        if HAS_BIAS:
            idx = (((rd_m[:, None] - rd_n[None, :] + WD - 1) * (2 * WH - 1) + (rh_m[:, None] - rh_n[None, :] + WH - 1))
                   * (2 * WW - 1) + (rw_m[:, None] - rw_n[None, :] + WW - 1))
            bias = tl.load(BIAS + h * TBL + idx, mask=allowed & valid_m[:, None], other=0.0)
            s += bias * 1.4426950408889634
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    l_i = tl.where(l_i > 0, l_i, 1.0)  # only padding slots with no allowed key (never stored) have l_i == 0
    out = acc / l_i[:, None]
    o_off = b * sob + cd_m * sod + ch_m * soh + cw_m * sow + h * son
    tl.store(OUT + o_off[:, None] + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=valid_m[:, None])
    tok = (cd_m * H + ch_m) * W + cw_m
    tl.store(LSE + (b * NTOK + tok) * HEADS + h, m_i + tl.log2(l_i), mask=valid_m)


class Launch:
    """Host-side launch data shared by the forward and backward kernels of one call.

    Attributes:
        tables: the six per-axis int32 tables ``(coord_d, wrapped_d, coord_h, wrapped_h, coord_w, wrapped_w)``.
        n_blocks: ``(nbd, nbh, nbw)`` axis-block counts; the grid has ``nbd*nbh*nbw`` blocks.
        block_m, block_n: tile sizes (powers of two >= 16, at most 64).
    """

    def __init__(self, q: torch.Tensor, partition: Partition) -> None:
        B, D, H, W, heads, hd = q.shape
        axes = grid_layout((D, H, W), partition, q.device)
        self.tables = tuple(t for a in axes for t in (a.coord, a.wrapped))
        self.n_blocks = tuple(a.n_blocks for a in axes)
        self.window = partition.window
        self.T = partition.block_size
        self.block_m = self.block_n = max(16, min(64, triton.next_power_of_2(self.T)))
        self.shape = (B, D, H, W, heads, hd)
        self.scale = 1.0 / math.sqrt(hd)

    @property
    def total_blocks(self) -> int:
        nbd, nbh, nbw = self.n_blocks
        return nbd * nbh * nbw


def make_launch(q: torch.Tensor, partition: Partition) -> Launch:
    """The :class:`Launch` for q's shape and the partition."""
    return Launch(q, partition)


def blocked_attention3d_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                                launch: Launch) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel.

    Args:
        q, k, v: ``[B, D, H, W, heads, head_dim]`` with a contiguous last dim (any other strides).
        bias: ``[heads, (2wd-1)(2wh-1)(2ww-1)]`` float32 contiguous, or None.
        launch: from :func:`make_launch`.

    Returns:
        ``(out, lse2)``: out ``[B, D, H, W, heads, head_dim]`` (q's dtype, contiguous), lse2
        ``[B, D*H*W, heads]`` float32 (see the module docstring).
    """
    B, D, H, W, heads, hd = launch.shape
    out = new_output(tuple(q.shape), q.dtype, q.device)
    lse = new_output((B, D * H * W, heads), torch.float32, q.device)
    _, nbh, nbw = launch.n_blocks
    wd, wh, ww = launch.window
    grid = (triton.cdiv(launch.T, launch.block_m), launch.total_blocks, B * heads)
    _fwd_kernel[grid](
        q, k, v, out, lse, bias if bias is not None else lse, *launch.tables,
        *q.stride()[:5], *k.stride()[:5], *v.stride()[:5], *out.stride()[:5],
        H, W, D * H * W, nbh, nbw, heads, launch.scale * LOG2E,
        WD=wd, WH=wh, WW=ww, HD=hd, BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, HAS_BIAS=bias is not None,
    )
    return out, lse
