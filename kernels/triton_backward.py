"""Triton backward kernels of blocked 3-D attention: dq, dk/dv and a deterministic bias-table gradient.

All three recompute the probabilities from q, k, the bias and the saved ``lse2`` (no score tensor is
stored). With ``ds = p * (dp - delta)``, ``dp = dO·vᵀ`` and ``delta = rowsum(dO * O)``:

- ``_dkdv_kernel``: one program per (key tile, block, batch*head), looping over the query tiles;
- ``_dq_kernel``: one program per (query tile, block, batch*head), looping over the key tiles;
- ``_dbias_kernel``: one program per (query tile, key tile, head, chunk of (batch, block) pairs). The
  bias gradient of a slot pair is the same table entry in every block, so each program sums its
  ``ds`` tile over its chunk *in registers* and writes it once to ``partial[chunk, head, T, T]``; no
  atomics. The host sums the chunks in a fixed order and folds ``[heads, T, T]`` onto the table with
  per-axis 0/1 matrices (:func:`fold_pairs_to_table`), so the result is bit-reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_forward import LOG2E, Launch, new_output, slots

__all__ = ["blocked_attention3d_backward", "fold_pairs_to_table"]


@triton.jit
def _probs(q, k, rd_m, rh_m, rw_m, valid_m, reg_m, rd_n, rh_n, rw_n, valid_n, reg_n, lse, BIAS, h, qk_scale,
           WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Softmax probabilities ``[BLOCK_M, BLOCK_N]`` of a (query tile, key tile), 0 where not allowed."""
    TBL: tl.constexpr = (2 * WD - 1) * (2 * WH - 1) * (2 * WW - 1)
    allowed = valid_m[:, None] & valid_n[None, :] & (reg_m[:, None] == reg_n[None, :])
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if HAS_BIAS:
        idx = (((rd_m[:, None] - rd_n[None, :] + WD - 1) * (2 * WH - 1) + (rh_m[:, None] - rh_n[None, :] + WH - 1))
               * (2 * WW - 1) + (rw_m[:, None] - rw_n[None, :] + WW - 1))
        s += tl.load(BIAS + h * TBL + idx, mask=allowed, other=0.0) * 1.4426950408889634
    return tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)


@triton.jit
def _tile(X, DO, LSE, DELTA, b, h, offs, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, sxb, sxd, sxh, sxw, sxn,
          H, W, NTOK, HEADS, HD: tl.constexpr, WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr):
    """Load a query tile: q, dO (contiguous layout), lse2, delta and the slot data."""
    offs_d = tl.arange(0, HD)
    rd, rh, rw, cd, ch, cw, valid, reg = slots(offs, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, WD, WH, WW)
    x = tl.load(X + (b * sxb + cd * sxd + ch * sxh + cw * sxw + h * sxn)[:, None] + offs_d[None, :],
                mask=valid[:, None], other=0.0)
    tok = (b * NTOK + (cd * H + ch) * W + cw) * HEADS + h
    do = tl.load(DO + (tok * HD)[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
    lse = tl.load(LSE + tok, mask=valid, other=0.0)
    delta = tl.load(DELTA + tok, mask=valid, other=0.0)
    return x, do, lse, delta, rd, rh, rw, tok, valid, reg


@triton.jit
def _kv(K, V, b, h, offs, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, skb, skd, skh, skw, skn,
        svb, svd, svh, svw, svn, H, W, NTOK, HEADS, HD: tl.constexpr, WD: tl.constexpr, WH: tl.constexpr,
        WW: tl.constexpr):
    """Load a key tile: k, v and the slot data (``tok``: row of the contiguous ``[B, N, heads]`` layout)."""
    offs_d = tl.arange(0, HD)
    rd, rh, rw, cd, ch, cw, valid, reg = slots(offs, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, WD, WH, WW)
    k = tl.load(K + (b * skb + cd * skd + ch * skh + cw * skw + h * skn)[:, None] + offs_d[None, :],
                mask=valid[:, None], other=0.0)
    v = tl.load(V + (b * svb + cd * svd + ch * svh + cw * svw + h * svn)[:, None] + offs_d[None, :],
                mask=valid[:, None], other=0.0)
    tok = (b * NTOK + (cd * H + ch) * W + cw) * HEADS + h
    return k, v, rd, rh, rw, tok, valid, reg


@triton.jit
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, BIAS, DK, DV, CD, RD, CH, RH, CW, RW,
                 sqb, sqd, sqh, sqw, sqn, skb, skd, skh, skw, skn, svb, svd, svh, svw, svn,
                 H, W, NTOK, NBH, NBW, HEADS, qk_scale, sm_scale,
                 WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HD: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr):
    T: tl.constexpr = WD * WH * WW
    blk = tl.program_id(1)
    bh = tl.program_id(2)
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    blk_d, blk_h, blk_w = blk // (NBH * NBW), (blk // NBW) % NBH, blk % NBW
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k, v, rd_n, rh_n, rw_n, tok_n, valid_n, reg_n = _kv(
        K, V, b, h, offs_n, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, skb, skd, skh, skw, skn,
        svb, svd, svh, svw, svn, H, W, NTOK, HEADS, HD, WD, WH, WW)
    dk = tl.zeros([BLOCK_N, HD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HD], dtype=tl.float32)
    for start_m in range(0, T, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, do, lse, delta, rd_m, rh_m, rw_m, _, valid_m, reg_m = _tile(
            Q, DO, LSE, DELTA, b, h, offs_m, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, sqb, sqd, sqh, sqw, sqn,
            H, W, NTOK, HEADS, HD, WD, WH, WW)
        p = _probs(q, k, rd_m, rh_m, rw_m, valid_m, reg_m, rd_n, rh_n, rw_n, valid_n, reg_n, lse, BIAS, h, qk_scale,
                   WD, WH, WW, HAS_BIAS)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    out = tok_n * HD
    offs_d = tl.arange(0, HD)
    tl.store(DK + out[:, None] + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=valid_n[:, None])
    tl.store(DV + out[:, None] + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=valid_n[:, None])


@triton.jit
def _dq_kernel(Q, K, V, DO, LSE, DELTA, BIAS, DQ, CD, RD, CH, RH, CW, RW,
               sqb, sqd, sqh, sqw, sqn, skb, skd, skh, skw, skn, svb, svd, svh, svw, svn,
               H, W, NTOK, NBH, NBW, HEADS, qk_scale, sm_scale,
               WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HD: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr):
    T: tl.constexpr = WD * WH * WW
    blk = tl.program_id(1)
    bh = tl.program_id(2)
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    blk_d, blk_h, blk_w = blk // (NBH * NBW), (blk // NBW) % NBH, blk % NBW
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q, do, lse, delta, rd_m, rh_m, rw_m, tok_m, valid_m, reg_m = _tile(
        Q, DO, LSE, DELTA, b, h, offs_m, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, sqb, sqd, sqh, sqw, sqn,
        H, W, NTOK, HEADS, HD, WD, WH, WW)
    dq = tl.zeros([BLOCK_M, HD], dtype=tl.float32)
    for start_n in range(0, T, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v, rd_n, rh_n, rw_n, _, valid_n, reg_n = _kv(
            K, V, b, h, offs_n, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, skb, skd, skh, skw, skn,
            svb, svd, svh, svw, svn, H, W, NTOK, HEADS, HD, WD, WH, WW)
        p = _probs(q, k, rd_m, rh_m, rw_m, valid_m, reg_m, rd_n, rh_n, rw_n, valid_n, reg_n, lse, BIAS, h, qk_scale,
                   WD, WH, WW, HAS_BIAS)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    out = tok_m * HD
    offs_d = tl.arange(0, HD)
    tl.store(DQ + out[:, None] + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=valid_m[:, None])


@triton.jit
def _dbias_kernel(Q, K, V, DO, LSE, DELTA, BIAS, PARTIAL, CD, RD, CH, RH, CW, RW,
                  sqb, sqd, sqh, sqw, sqn, skb, skd, skh, skw, skn, svb, svd, svh, svw, svn,
                  H, W, NTOK, NBH, NBW, NBLOCKS, BATCH, HEADS, PER_CHUNK, qk_scale,
                  WD: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HD: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    T: tl.constexpr = WD * WH * WW
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    chunk = tl.program_id(2) // HEADS
    h = tl.program_id(2) % HEADS
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    first = chunk * PER_CHUNK
    last = tl.minimum(first + PER_CHUNK, BATCH * NBLOCKS)
    for item in range(first, last):
        b = (item // NBLOCKS).to(tl.int64)
        blk = item % NBLOCKS
        blk_d, blk_h, blk_w = blk // (NBH * NBW), (blk // NBW) % NBH, blk % NBW
        q, do, lse, delta, rd_m, rh_m, rw_m, _, valid_m, reg_m = _tile(
            Q, DO, LSE, DELTA, b, h, offs_m, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, sqb, sqd, sqh, sqw, sqn,
            H, W, NTOK, HEADS, HD, WD, WH, WW)
        k, v, rd_n, rh_n, rw_n, _, valid_n, reg_n = _kv(
            K, V, b, h, offs_n, blk_d, blk_h, blk_w, CD, RD, CH, RH, CW, RW, skb, skd, skh, skw, skn,
            svb, svd, svh, svw, svn, H, W, NTOK, HEADS, HD, WD, WH, WW)
        p = _probs(q, k, rd_m, rh_m, rw_m, valid_m, reg_m, rd_n, rh_n, rw_n, valid_n, reg_n, lse, BIAS, h, qk_scale,
                   WD, WH, WW, True)
        acc += p * (tl.dot(do, tl.trans(v)) - delta[:, None])
    base = (tl.program_id(2).to(tl.int64) * T + offs_m) * T
    tl.store(PARTIAL + base[:, None] + offs_n[None, :], acc, mask=(offs_m[:, None] < T) & (offs_n[None, :] < T))


def fold_pairs_to_table(pairs: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """Sum a per-slot-pair gradient ``[heads, T, T]`` onto the bias table ``[heads, (2wd-1)(2wh-1)(2ww-1)]``.

    Entry ``(Δd, Δh, Δw)`` collects the pairs with those in-window offsets; done with per-axis 0/1
    matrices ``[2w-1, w, w]`` (plain matmuls, deterministic).
    """
    heads = pairs.shape[0]
    x = pairs.reshape(heads, *window, *window)  # [heads, ad, ah, aw, bd, bh, bw]
    mats = []
    for w in window:
        r = torch.arange(w, device=pairs.device)
        delta = r[:, None] - r[None, :] + w - 1  # [w (query), w (key)]
        mats.append((delta[None] == torch.arange(2 * w - 1, device=pairs.device)[:, None, None]).to(pairs.dtype))
    out = torch.einsum("nabcdef,xad,ybe,zcf->nxyz", x, *mats)
    return out.reshape(heads, -1)


def blocked_attention3d_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                                 lse: torch.Tensor, dout: torch.Tensor, bias: torch.Tensor | None, launch: Launch,
                                 need_dbias: bool) -> tuple[torch.Tensor, ...]:
    """Gradients of blocked 3-D attention.

    Args:
        q, k, v: ``[B, D, H, W, heads, head_dim]`` as given to the forward pass.
        out, lse: the forward outputs (``out`` contiguous, ``lse`` ``[B, D*H*W, heads]`` float32).
        dout: ``[B, D, H, W, heads, head_dim]`` upstream gradient.
        bias: the float32 table used by the forward pass, or None.
        launch: the forward :class:`~medattn.kernels.triton_forward.Launch`.
        need_dbias: compute the bias-table gradient.

    Returns:
        ``(dq, dk, dv, dbias)``; dq/dk/dv contiguous in q's dtype, dbias ``[heads, table]`` float32 or None.
    """
    B, D, H, W, heads, hd = launch.shape
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1).reshape(B, D * H * W, heads)  # [B, N, heads]
    dq, dk, dv = (new_output(tuple(q.shape), q.dtype, q.device) for _ in range(3))
    _, nbh, nbw = launch.n_blocks
    wd, wh, ww = launch.window
    bias_arg = bias if bias is not None else lse
    strides = (*q.stride()[:5], *k.stride()[:5], *v.stride()[:5])
    common = dict(WD=wd, WH=wh, WW=ww, HD=hd, BLOCK_M=launch.block_m, BLOCK_N=launch.block_n)
    args = (H, W, D * H * W, nbh, nbw, heads, launch.scale * LOG2E, launch.scale)
    _dkdv_kernel[(triton.cdiv(launch.T, launch.block_n), launch.total_blocks, B * heads)](
        q, k, v, dout, lse, delta, bias_arg, dk, dv, *launch.tables, *strides, *args,
        HAS_BIAS=bias is not None, **common)
    _dq_kernel[(triton.cdiv(launch.T, launch.block_m), launch.total_blocks, B * heads)](
        q, k, v, dout, lse, delta, bias_arg, dq, *launch.tables, *strides, *args,
        HAS_BIAS=bias is not None, **common)
    dbias = None
    if need_dbias and bias is not None:
        tiles = triton.cdiv(launch.T, launch.block_m) * triton.cdiv(launch.T, launch.block_n) * heads
        items = B * launch.total_blocks
        chunks = max(1, min(items, triton.cdiv(1024, tiles)))  # a function of the shapes only: reproducible
        per_chunk = triton.cdiv(items, chunks)
        chunks = triton.cdiv(items, per_chunk)
        partial = new_output((chunks, heads, launch.T, launch.T), torch.float32, q.device)
        _dbias_kernel[(triton.cdiv(launch.T, launch.block_m), triton.cdiv(launch.T, launch.block_n), chunks * heads)](
            q, k, v, dout, lse, delta, bias, partial, *launch.tables, *strides,
            H, W, D * H * W, nbh, nbw, launch.total_blocks, B, heads, per_chunk, launch.scale * LOG2E, **common)
        dbias = fold_pairs_to_table(partial.sum(0), launch.window)
    return dq, dk, dv, dbias
