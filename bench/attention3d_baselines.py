"""Baselines for ``bench/attention3d.py``: blocked 3-D attention the way libraries do it today.

All compute the function of :mod:`medattn.kernels.spec` (windows, dilated groups, cyclic shift, ragged
edges masked, relative-position bias) on ``[B, D, H, W, heads, head_dim]`` tensors, but by first
*partitioning*: pad, split dilated groups, roll for the shift, pad to whole windows and permute into
``[blocks, heads, T, head_dim]`` (T = wd*wh*ww), as MONAI's SwinUNETR does, then undo it afterwards.

* :func:`naive_attention3d`: matmul + bias + mask + softmax (fp32) + matmul; scores ``[blocks, heads, T, T]``
  are materialised; :func:`compiled_naive_attention3d` is the same under ``torch.compile``;
* :func:`sdpa_attention3d`: ``F.scaled_dot_product_attention`` with the bias + mask as a float mask;
* :func:`flex_attention3d`: FlexAttention with the bias (and mask) in a ``score_mod``;
* :func:`natten_attention3d`: NATTEN's ``na3d`` (neighbourhood attention: a *different* function,
  sliding rather than blocked windows; timed without bias for scale, its error is not comparable).

Supported: any window and dilation; a shift only when every dilation divides its axis and every window
divides the strided length (otherwise :class:`Unsupported`, reported as skipped).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from medattn.kernels import Partition


class Unsupported(Exception):
    """This baseline cannot compute the requested partition; the message says why."""


@dataclass(frozen=True)
class Plan:
    """Padding and reshape sizes of one ``(D, H, W)`` grid under one partition (per axis: d, h, w)."""

    spatial: tuple[int, int, int]
    window: tuple[int, int, int]
    strides: tuple[int, int, int]
    shifts: tuple[int, int, int]
    lengths: tuple[int, int, int]  # strided line length L = ceil(n / s)
    n_windows: tuple[int, int, int]  # ceil(L / w)

    @property
    def block_size(self) -> int:
        return math.prod(self.window)


def make_plan(spatial: tuple[int, int, int], partition: Partition) -> Plan:
    """Per-axis sizes; raises :class:`Unsupported` for shifts on ragged lines."""
    lengths = tuple(-(-n // s) for n, s in zip(spatial, partition.strides))
    n_windows = tuple(-(-L // w) for L, w in zip(lengths, partition.window))
    if any(partition.shifts):
        ragged = any(n % s for n, s in zip(spatial, partition.strides)) or any(
            L % w for L, w in zip(lengths, partition.window))
        if ragged:
            raise Unsupported("shift with ragged groups/windows (rolling a padded line is not the spec's roll)")
    return Plan(spatial, partition.window, partition.strides, partition.shifts, lengths, n_windows)


def partition_tokens(x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """``[B, D, H, W, heads, d]`` → ``[B * blocks, heads, T, d]`` (blocks ordered groups, then windows)."""
    B, _, _, _, heads, d = x.shape
    (sd, sh, sw), (Ld, Lh, Lw), (wd, wh, ww), (nd, nh, nw) = plan.strides, plan.lengths, plan.window, plan.n_windows
    pads = [0, 0, 0, 0]  # F.pad lists the last dims first: d, heads, then W, H, D
    for n, L, s in reversed(list(zip(plan.spatial, plan.lengths, plan.strides))):
        pads += [0, L * s - n]
    x = F.pad(x, pads)
    x = x.view(B, Ld, sd, Lh, sh, Lw, sw, heads, d).permute(0, 2, 4, 6, 1, 3, 5, 7, 8)
    if any(plan.shifts):
        x = torch.roll(x, shifts=tuple(-t for t in plan.shifts), dims=(4, 5, 6))
    x = F.pad(x, [0, 0, 0, 0, 0, nw * ww - Lw, 0, nh * wh - Lh, 0, nd * wd - Ld])
    x = x.reshape(B, sd, sh, sw, nd, wd, nh, wh, nw, ww, heads, d).permute(0, 1, 2, 3, 4, 6, 8, 10, 5, 7, 9, 11)
    return x.reshape(-1, heads, plan.block_size, d)


def unpartition_tokens(y: torch.Tensor, plan: Plan, batch: int) -> torch.Tensor:
    """Inverse of :func:`partition_tokens`: ``[B * blocks, heads, T, d]`` → ``[B, D, H, W, heads, d]``."""
    heads, d = y.shape[1], y.shape[3]
    (sd, sh, sw), (Ld, Lh, Lw), (wd, wh, ww), (nd, nh, nw) = plan.strides, plan.lengths, plan.window, plan.n_windows
    y = y.view(batch, sd, sh, sw, nd, nh, nw, heads, wd, wh, ww, d).permute(0, 1, 2, 3, 4, 8, 5, 9, 6, 10, 7, 11)
    y = y.reshape(batch, sd, sh, sw, nd * wd, nh * wh, nw * ww, heads, d)[:, :, :, :, :Ld, :Lh, :Lw]
    if any(plan.shifts):
        y = torch.roll(y, shifts=plan.shifts, dims=(4, 5, 6))
    y = y.permute(0, 4, 1, 5, 2, 6, 3, 7, 8).reshape(batch, Ld * sd, Lh * sh, Lw * sw, heads, d)
    D, H, W = plan.spatial
    return y[:, :D, :H, :W]


@lru_cache(maxsize=64)
def _allowed(plan: Plan, device: torch.device) -> torch.Tensor | None:
    """``[blocks, T, T]`` bool: key valid and same shift region as the query; None when all True."""
    D, H, W = plan.spatial
    coords = torch.meshgrid(*(torch.arange(n) for n in plan.spatial), indexing="ij")
    region = torch.zeros(D, H, W)
    for axis, (c, s, t) in enumerate(zip(coords, plan.strides, plan.shifts)):
        region += (((c // s) < t) & (t > 0)).float() * 2**axis  # wrapped tokens: strided coordinate < shift
    grid = torch.stack([region, torch.ones(D, H, W)], dim=-1)[None, :, :, :, None, :]  # [1, D, H, W, 1, 2]
    blocks = partition_tokens(grid, plan)[:, 0]  # [blocks, T, 2]; padding slots have valid = 0
    region_b, valid = blocks[..., 0], blocks[..., 1] > 0
    allowed = (region_b[:, :, None] == region_b[:, None, :]) & valid[:, None, :]
    return None if bool(allowed.all()) else allowed.to(device)


@lru_cache(maxsize=16)
def _relative_index(window: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    wd, wh, ww = window
    r = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij"), -1).reshape(-1, 3)
    delta = r[:, None, :] - r[None, :, :] + torch.tensor([wd - 1, wh - 1, ww - 1])
    return ((delta[..., 0] * (2 * wh - 1) + delta[..., 1]) * (2 * ww - 1) + delta[..., 2]).to(device)


def score_bias(plan: Plan, bias_table: torch.Tensor | None, rel: torch.Tensor, allowed: torch.Tensor | None,
               dtype: torch.dtype) -> torch.Tensor | None:
    """``[blocks or 1, heads or 1, T, T]`` additive bias + mask (large negative where not allowed), or None."""
    bias = None if bias_table is None else bias_table.to(dtype)[:, rel][None]
    if allowed is None:
        return bias
    neg = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min / 2)
    return neg[:, None] if bias is None else bias + neg[:, None]


def _batched(bias: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Repeat a per-block bias over the batch (blocks are batch-major in the partitioned layout)."""
    if bias is None or bias.shape[0] == 1:
        return bias
    return bias.unsqueeze(0).expand(batch, *bias.shape).reshape(-1, *bias.shape[1:])


def _naive_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_table: torch.Tensor | None,
                rel: torch.Tensor, allowed: torch.Tensor | None, plan: Plan) -> torch.Tensor:
    qb, kb, vb = (partition_tokens(t, plan) for t in (q, k, v))
    scores = torch.matmul(qb * (1.0 / math.sqrt(q.shape[-1])), kb.transpose(-1, -2))
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # softmax in fp32 (or float64)
    bias = _batched(score_bias(plan, bias_table, rel, allowed, scores.dtype), q.shape[0])
    if bias is not None:
        scores = scores + bias
    out = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), vb)
    return unpartition_tokens(out, plan, q.shape[0])


def _sdpa_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_table: torch.Tensor | None,
               rel: torch.Tensor, allowed: torch.Tensor | None, plan: Plan) -> torch.Tensor:
    qb, kb, vb = (partition_tokens(t, plan) for t in (q, k, v))
    bias = score_bias(plan, bias_table, rel, allowed, q.dtype)
    if bias is not None:
        bias = _batched(bias, q.shape[0]).expand(qb.shape[0], qb.shape[1], *bias.shape[2:])
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias)
    return unpartition_tokens(out, plan, q.shape[0])


def _run(core: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
         bias_table: torch.Tensor | None) -> torch.Tensor:
    """Plan, relative index and mask eagerly (cached), then ``core`` (which ``torch.compile`` can trace whole)."""
    plan = make_plan(tuple(q.shape[1:4]), partition)
    return core(q, k, v, bias_table, _relative_index(plan.window, q.device), _allowed(plan, q.device), plan)


def naive_attention3d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                      bias_table: torch.Tensor | None = None) -> torch.Tensor:
    """Partition → ``softmax(q kᵀ / sqrt(d) + bias + mask)`` (fp32 softmax) → ``@ v`` → un-partition."""
    return _run(_naive_core, q, k, v, partition, bias_table)


def compiled_naive_attention3d(**compile_kwargs: object) -> Callable:
    """:func:`naive_attention3d` with its tensor work under ``torch.compile(**compile_kwargs)``."""
    core = torch.compile(_naive_core, **compile_kwargs)
    return lambda q, k, v, partition, bias_table=None: _run(core, q, k, v, partition, bias_table)


def sdpa_attention3d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                     bias_table: torch.Tensor | None = None) -> torch.Tensor:
    """Partition → ``F.scaled_dot_product_attention`` with a float bias + mask → un-partition."""
    return _run(_sdpa_core, q, k, v, partition, bias_table)


def flex_attention3d(compiled_flex: Callable) -> Callable:
    """Blocked attention through ``compiled_flex`` (a compiled ``flex_attention``), bias in ``score_mod``."""

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
            bias_table: torch.Tensor | None = None) -> torch.Tensor:
        plan = make_plan(tuple(q.shape[1:4]), partition)
        qb, kb, vb = (partition_tokens(t, plan) for t in (q, k, v))
        rel = _relative_index(plan.window, q.device)
        allowed = _allowed(plan, q.device)
        n_blocks = qb.shape[0] // q.shape[0]

        def score_mod(score, b, h, q_idx, kv_idx):
            if bias_table is not None:
                score = score + bias_table[h, rel[q_idx, kv_idx]]
            if allowed is not None:
                score = torch.where(allowed[b % n_blocks, q_idx, kv_idx], score, -float("inf"))
            return score

        out = compiled_flex(qb, kb, vb, score_mod=score_mod)
        return unpartition_tokens(out, plan, q.shape[0])

    return run


def natten_attention3d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                       bias_table: torch.Tensor | None = None) -> torch.Tensor:
    """NATTEN ``na3d`` neighbourhood attention with the same window (kernel) size and dilation; no bias."""
    from natten.functional import na3d  # optional dependency, imported only when benchmarked

    if bias_table is not None or any(partition.shifts):
        raise Unsupported("NATTEN has no relative-position bias (since 0.20) and no shifted windows")
    return na3d(q, k, v, kernel_size=partition.window, dilation=partition.strides)
