"""Fused additive attention gate in Triton: forward and backward kernels and their autograd Function.

The gate of the Attention U-Net (Oktay et al. 2018) computes, at the gating resolution,

    alpha[b, s] = sigmoid( sum_f psi[f] * ReLU(theta[b, f, s] + phi[b, f, s]) + psi_bias )

from the two projections ``theta = theta_x(x)`` and ``phi = phi_g(g)``, both (B, F, *s). Unfused,
PyTorch writes ``theta + phi`` and its ReLU, (B, F, *s) each, to memory and keeps the ReLU for the
backward pass. Here one program owns a block of ``BLOCK_S`` positions of one sample, loops over the
F channels in chunks, and keeps everything in registers: the forward pass reads theta and phi once
and writes only alpha (B, 1, *s). The backward pass recomputes ``theta + phi`` from the saved inputs
and writes only the one gradient that theta and phi share (d alpha/d theta = d alpha/d phi), plus
per-program partial sums for the psi weight and bias gradients that are then added up by
``torch.sum`` in a fixed order: no atomics, so the gradients are deterministic.

Memory trade-off: for the backward pass the Function keeps its inputs theta and phi, where the
unfused gate keeps its ReLU output and lets theta and phi go; so training holds one more (B, F, *s)
tensor per gate, while the forward pass writes only alpha (the unfused one also theta + phi and psi's output).

All arithmetic is fp32 whatever the input dtype (fp32, fp16, bf16). Inputs may be contiguous or
channels-last: the kernels take strides, spatial axes only need to be flattenable to one axis.

Importing this module needs triton. Kernels are decorated at import time, so set
``TRITON_INTERPRET=1`` *before* importing it to run them on CPU tensors with the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["FusedAttentionGate", "fused_attention_gate"]

BLOCK_S = 128  # positions per program (one sample)
MAX_BLOCK_F = 32  # channels per loop iteration, at most


def _block_f(feats: int) -> int:
    return min(triton.next_power_of_2(max(feats, 1)), MAX_BLOCK_F)


@triton.jit
def _gate_fwd_kernel(theta_ptr, phi_ptr, w_ptr, b_ptr, alpha_ptr, S, F,
                     t_sb, t_sf, t_ss, p_sb, p_sf, p_ss,
                     HAS_BIAS: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_s = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = offs_s < S
    acc = tl.zeros([BLOCK_S], dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        mask_f = offs_f < F
        m = mask_f[:, None] & mask_s[None, :]
        t = tl.load(theta_ptr + b * t_sb + offs_f[:, None] * t_sf + offs_s[None, :] * t_ss, mask=m, other=0.0)
        p = tl.load(phi_ptr + b * p_sb + offs_f[:, None] * p_sf + offs_s[None, :] * p_ss, mask=m, other=0.0)
        w = tl.load(w_ptr + offs_f, mask=mask_f, other=0.0).to(tl.float32)
        h = tl.maximum(t.to(tl.float32) + p.to(tl.float32), 0.0)
        acc += tl.sum(h * w[:, None], axis=0)
    if HAS_BIAS:
        acc += tl.load(b_ptr).to(tl.float32)
    alpha = tl.sigmoid(acc)
    tl.store(alpha_ptr + b * S + offs_s, alpha.to(alpha_ptr.dtype.element_ty), mask=mask_s)


@triton.jit
def _gate_bwd_kernel(theta_ptr, phi_ptr, w_ptr, alpha_ptr, dalpha_ptr, dh_ptr, dw_part_ptr, db_part_ptr,
                     S, F, n_blocks_s,
                     t_sb, t_sf, t_ss, p_sb, p_sf, p_ss, d_sb, d_sf, d_ss,
                     BLOCK_F: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_s = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    part = b * n_blocks_s + pid_s
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = offs_s < S
    a = tl.load(alpha_ptr + b * S + offs_s, mask=mask_s, other=0.0).to(tl.float32)
    da = tl.load(dalpha_ptr + b * S + offs_s, mask=mask_s, other=0.0).to(tl.float32)
    dq = da * a * (1.0 - a)  # d loss / d (psi . ReLU(h) + bias); 0 outside the block
    tl.store(db_part_ptr + part, tl.sum(dq, axis=0))
    for f0 in range(0, F, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        mask_f = offs_f < F
        m = mask_f[:, None] & mask_s[None, :]
        t = tl.load(theta_ptr + b * t_sb + offs_f[:, None] * t_sf + offs_s[None, :] * t_ss, mask=m, other=0.0)
        p = tl.load(phi_ptr + b * p_sb + offs_f[:, None] * p_sf + offs_s[None, :] * p_ss, mask=m, other=0.0)
        w = tl.load(w_ptr + offs_f, mask=mask_f, other=0.0).to(tl.float32)
        h = t.to(tl.float32) + p.to(tl.float32)
        dh = tl.where(h > 0.0, dq[None, :] * w[:, None], 0.0)
        tl.store(dh_ptr + b * d_sb + offs_f[:, None] * d_sf + offs_s[None, :] * d_ss,
                 dh.to(dh_ptr.dtype.element_ty), mask=m)
        dw = tl.sum(tl.maximum(h, 0.0) * dq[None, :], axis=1)
        tl.store(dw_part_ptr + part * F + offs_f, dw, mask=mask_f)


def _new_empty(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised kernel output (a hook: the tests poison outputs through it)."""
    return torch.empty(shape, device=like.device, dtype=dtype)


def _new_empty_like(t: torch.Tensor) -> torch.Tensor:
    """Uninitialised kernel output with ``t``'s shape, dtype and memory layout (a hook, as above)."""
    return torch.empty_like(t)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, F, *s) → (B, F, S); a view whenever the spatial axes can be merged (contiguous, channels-last)."""
    return t.flatten(2)


class FusedAttentionGate(torch.autograd.Function):
    """``alpha = sigmoid(psi · ReLU(theta + phi) + psi_bias)`` with the fused Triton kernels.

    ``forward(theta, phi, psi_weight, psi_bias)``: theta, phi (B, F, *s) of one dtype; psi_weight
    with F elements (a conv weight (1, F, 1, ..., 1) is fine); psi_bias one element or None.
    Returns alpha (B, 1, *s) in theta's dtype. Saves theta, phi and alpha, not the ReLU.
    """

    @staticmethod
    def forward(ctx, theta: torch.Tensor, phi: torch.Tensor, psi_weight: torch.Tensor,
                psi_bias: torch.Tensor | None) -> torch.Tensor:
        t3, p3 = _flat(theta), _flat(phi)
        batch, feats, size = t3.shape
        w = psi_weight.detach().reshape(feats).contiguous()
        bias = psi_bias.detach().reshape(1).contiguous() if psi_bias is not None else w
        alpha = _new_empty((batch, 1, *theta.shape[2:]), theta, theta.dtype)
        n_blocks = triton.cdiv(size, BLOCK_S)
        if size > 0 and batch > 0:
            _gate_fwd_kernel[(n_blocks, batch)](
                t3, p3, w, bias, alpha, size, feats, *t3.stride(), *p3.stride(),
                HAS_BIAS=psi_bias is not None, BLOCK_F=_block_f(feats), BLOCK_S=BLOCK_S)
        ctx.save_for_backward(theta, phi, psi_weight, alpha)
        ctx.has_bias = psi_bias is not None
        ctx.bias_meta = (psi_bias.shape, psi_bias.dtype) if psi_bias is not None else None
        return alpha

    @staticmethod
    def backward(ctx, grad_alpha: torch.Tensor):
        theta, phi, psi_weight, alpha = ctx.saved_tensors
        t3, p3 = _flat(theta), _flat(phi)
        batch, feats, size = t3.shape
        w = psi_weight.detach().reshape(feats).contiguous()
        grad = grad_alpha.to(alpha.dtype).contiguous()
        dh = _new_empty_like(theta)
        d3 = _flat(dh)
        n_blocks = triton.cdiv(size, BLOCK_S)
        dw_part = _new_empty((batch * n_blocks, feats), theta, torch.float32)
        db_part = _new_empty((batch * n_blocks,), theta, torch.float32)
        if size > 0 and batch > 0:
            _gate_bwd_kernel[(n_blocks, batch)](
                t3, p3, w, alpha, grad, d3, dw_part, db_part, size, feats, n_blocks,
                *t3.stride(), *p3.stride(), *d3.stride(), BLOCK_F=_block_f(feats), BLOCK_S=BLOCK_S)
        # theta and phi share their gradient; like autograd's own add backward, return the same tensor for
        # both (autograd never lets two leaves' .grad alias it: AccumulateGrad copies a shared gradient).
        d_theta = dh if ctx.needs_input_grad[0] else None
        d_phi = dh if ctx.needs_input_grad[1] else None
        d_w = dw_part.sum(0).reshape(psi_weight.shape).to(psi_weight.dtype) if ctx.needs_input_grad[2] else None
        d_b = None
        if ctx.has_bias and ctx.needs_input_grad[3]:
            shape, dtype = ctx.bias_meta
            d_b = db_part.sum().reshape(shape).to(dtype)
        return d_theta, d_phi, d_w, d_b


def fused_attention_gate(theta: torch.Tensor, phi: torch.Tensor, psi_weight: torch.Tensor,
                         psi_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Fused gate alpha (B, 1, *s) from theta, phi (B, F, *s); inputs must already be validated."""
    return FusedAttentionGate.apply(theta, phi, psi_weight, psi_bias)
