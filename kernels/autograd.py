"""``torch.autograd.Function`` tying the Triton forward and backward kernels together."""

from __future__ import annotations

from typing import Any

import torch

from .spec import Partition
from .triton_backward import blocked_attention3d_backward
from .triton_forward import blocked_attention3d_forward, make_launch

__all__ = ["BlockedAttention3dFunction"]


class BlockedAttention3dFunction(torch.autograd.Function):
    """Blocked 3-D attention on the Triton kernels; inputs are validated by the dispatcher.

    ``apply(q, k, v, bias_table, partition)`` with q, k, v ``[B, D, H, W, heads, head_dim]`` (last dim
    contiguous) and ``bias_table`` ``[heads, (2wd-1)(2wh-1)(2ww-1)]`` or None; returns
    ``[B, D, H, W, heads, head_dim]``. The gradient of the bias table has the table's dtype.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_table: torch.Tensor | None,
                partition: Partition) -> torch.Tensor:
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
        launch = make_launch(q, partition)
        bias = None if bias_table is None else bias_table.detach().float().contiguous()
        out, lse = blocked_attention3d_forward(q, k, v, bias, launch)
        ctx.save_for_backward(q, k, v, out, lse, bias)
        ctx.launch = launch
        ctx.bias_dtype = None if bias_table is None else bias_table.dtype
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse, bias = ctx.saved_tensors
        need_dbias = bias is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = blocked_attention3d_backward(q, k, v, out, lse, dout, bias, ctx.launch, need_dbias)
        if dbias is not None:
            dbias = dbias.to(ctx.bias_dtype)
        return dq, dk, dv, dbias, None
