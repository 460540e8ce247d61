"""``blocked_attention3d``: the public op, dispatching to the Triton kernels or the PyTorch reference."""

from __future__ import annotations

import os

import torch

from . import selected_backend
from .reference import reference_blocked_attention3d
from .spec import Partition, check_inputs

__all__ = ["blocked_attention3d"]


def blocked_attention3d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                        bias_table: torch.Tensor | None = None, *, backend: str | None = None) -> torch.Tensor:
    """Attention inside 3-D blocks (local, shifted or dilated windows) with a relative-position bias.

    The semantics are documented in :mod:`medattn.kernels.spec`; both backends compute the same
    function, and both are differentiable with respect to q, k, v and ``bias_table``.

    Args:
        q, k, v: ``[B, D, H, W, heads, head_dim]``, channels-last token layout (the last dim contiguous
            for the Triton backend; other strides are followed as they are, nothing is copied).
        partition: :class:`~medattn.kernels.spec.Partition` (window, optional dilation, optional shift).
        bias_table: ``[heads, (2wd-1)(2wh-1)(2ww-1)]`` or None; softmax scale is ``1/sqrt(head_dim)``.
        backend: "reference" or "triton"; None picks :func:`~medattn.kernels.selected_backend` for
            q's device (Triton on CUDA, the reference on CPU, ``MEDATTN_ATTENTION`` overrides).

    Returns:
        ``[B, D, H, W, heads, head_dim]`` in q's dtype.

    Raises:
        ValueError: unsupported dtype / head_dim / shape, a bias table of the wrong shape, an unknown
            backend, or the Triton backend asked for CPU tensors without ``TRITON_INTERPRET=1``.
    """
    name = selected_backend(q.device.type if isinstance(q, torch.Tensor) else "cpu") if backend is None else backend
    if name == "reference":
        return reference_blocked_attention3d(q, k, v, partition, bias_table)
    if name != "triton":
        raise ValueError(f"backend={name!r}: expected 'reference' or 'triton'")
    check_inputs(q, k, v, partition, bias_table)
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the triton attention backend needs CUDA tensors (q is on {q.device}); "
                         "use backend='reference' or set TRITON_INTERPRET=1 before importing triton")
    from .autograd import BlockedAttention3dFunction

    return BlockedAttention3dFunction.apply(q, k, v, bias_table, partition)
