"""Additive attention gate of the Attention U-Net: PyTorch reference, fused Triton path and dispatch.

The op (Oktay et al. 2018, Fig. 2), at the gating resolution:

    alpha = sigmoid(psi · ReLU(theta + phi) + psi_bias)        theta, phi (B, F, *s) → alpha (B, 1, *s)

where ``theta = theta_x(x)`` and ``phi = phi_g(g)`` are the projections of the skip and of the gating
signal to F inter-channels, ``psi`` a 1×1 convolution F → 1. ``*s`` is 2-D or 3-D.

* :func:`reference_attention_gate`: the unfused PyTorch gate (add, ReLU, 1×1 conv, sigmoid). It is
  the CPU path and the test oracle.
* :func:`attention_gate`: dispatches on :func:`medattn.kernels.selected_backend` (the fused Triton
  kernels of :mod:`.attention_gate_triton` on CUDA, the reference on CPU, ``MEDATTN_ATTENTION`` to
  override). The fused kernels never write ``theta + phi`` or its ReLU to memory.
* :func:`use_fused_gate`: the Attention U-Net asks this for each gate call; it is True for CUDA
  tensors with the triton backend selected and available.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from medattn.kernels import available_backends, selected_backend

__all__ = ["attention_gate", "reference_attention_gate", "use_fused_gate"]

#: dtypes of the fused kernels; the reference also takes float64 (for gradcheck)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(theta: torch.Tensor, phi: torch.Tensor, psi_weight: torch.Tensor, psi_bias: torch.Tensor | None,
           dtypes: tuple[torch.dtype, ...] = SUPPORTED_DTYPES) -> None:
    if theta.ndim not in (4, 5):
        raise ValueError(f"attention gate: theta must be (B, F, *s) with 2 or 3 spatial axes, "
                         f"got shape {tuple(theta.shape)}")
    if phi.shape != theta.shape:
        raise ValueError(f"attention gate: theta {tuple(theta.shape)} and phi {tuple(phi.shape)} differ in shape")
    for name, t in (("theta", theta), ("phi", phi), ("psi_weight", psi_weight)):
        if t.dtype not in dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise TypeError(f"attention gate: {name} has dtype {t.dtype}; supported: {names}")
    if psi_weight.numel() != theta.shape[1]:
        raise ValueError(f"attention gate: psi_weight has {psi_weight.numel()} elements, "
                         f"expected F = {theta.shape[1]}")
    if psi_bias is not None and psi_bias.numel() != 1:
        raise ValueError(f"attention gate: psi_bias must have 1 element, got {psi_bias.numel()}")


def reference_attention_gate(theta: torch.Tensor, phi: torch.Tensor, psi_weight: torch.Tensor,
                             psi_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Unfused gate: ``sigmoid(conv1x1(ReLU(theta + phi), psi_weight, psi_bias))``.

    Args:
        theta, phi: (B, F, *s) with 2 or 3 spatial axes, same shape; float16/bfloat16/float32/float64
            (dtypes are promoted).
        psi_weight: F elements, e.g. the (1, F, 1, 1[, 1]) weight of the psi convolution.
        psi_bias: one element or None.

    Returns:
        alpha (B, 1, *s), in the dtype of ``theta + phi``.
    """
    _check(theta, phi, psi_weight, psi_bias, (*SUPPORTED_DTYPES, torch.float64))
    f = F.relu(theta + phi)
    w = psi_weight.reshape(1, theta.shape[1], *([1] * (theta.ndim - 2))).to(f.dtype)
    b = psi_bias.reshape(1).to(f.dtype) if psi_bias is not None else None
    conv = F.conv3d if theta.ndim == 5 else F.conv2d
    return torch.sigmoid(conv(f, w, b))


@functools.cache
def _triton_on_cuda() -> bool:
    return available_backends()["triton"]


def _triton_usable(t: torch.Tensor) -> bool:
    if t.is_cuda:
        return _triton_on_cuda()
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_fused_gate(t: torch.Tensor) -> bool:
    """True when a gate on ``t``'s device should run the fused Triton kernels (CUDA + triton selected)."""
    return t.is_cuda and selected_backend("cuda") == "triton" and _triton_on_cuda()


def attention_gate(theta: torch.Tensor, phi: torch.Tensor, psi_weight: torch.Tensor,
                   psi_bias: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """Attention-gate coefficients alpha (B, 1, *s) from theta, phi (B, F, *s); differentiable.

    ``backend``: ``"reference"`` or ``"triton"``; None picks :func:`medattn.kernels.selected_backend`
    for theta's device. The triton backend needs CUDA tensors, or CPU tensors with
    ``TRITON_INTERPRET=1`` set before triton is first imported (the interpreter).

    Raises:
        TypeError: a dtype the backend does not support.
        ValueError: shapes the op does not support, an unknown backend, or the triton backend asked for
            where it cannot run (CPU tensors without the interpreter), as in ``blocked_attention3d``.
    """
    backend = backend or selected_backend(theta.device.type)
    if backend == "reference":
        return reference_attention_gate(theta, phi, psi_weight, psi_bias)
    if backend != "triton":
        raise ValueError(f"attention gate: unknown backend {backend!r}; expected reference or triton")
    _check(theta, phi, psi_weight, psi_bias)
    if not _triton_usable(theta):
        raise ValueError(f"attention gate: the triton backend cannot run on {theta.device.type} tensors here "
                           "(it needs CUDA with triton installed, or TRITON_INTERPRET=1 on CPU)")
    from medattn.kernels.attention_gate_triton import fused_attention_gate

    dtype = torch.promote_types(theta.dtype, phi.dtype)
    return fused_attention_gate(theta.to(dtype), phi.to(dtype), psi_weight, psi_bias)
