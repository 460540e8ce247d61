"""The partition spec of blocked 3-D attention and the validation shared by every backend.

Semantics (the reference in :mod:`medattn.kernels.reference` is the executable definition). Every
axis is treated the same way and independently; for one axis of extent ``n`` with window ``w``,
dilation ``s`` (1 when ``dilation`` is None) and shift ``t`` (0 when ``shift`` is None):

1. **Groups.** Token ``i`` belongs to group ``g = i mod s`` and has the *strided coordinate*
   ``c = i div s``. Group ``g`` holds ``n_g = ceil((n - g) / s)`` tokens (groups may differ by one
   when ``n`` is not divisible by ``s``). With ``s == 1`` there is one group and ``c = i``.
2. **Shift (Swin).** Within a group the strided line is rolled by ``-t``: rolled position ``p`` holds
   the token with ``c = (p + t) mod n_g``. A token is *wrapped* when ``p >= n_g - (t mod n_g)``,
   i.e. it came from the start of the line. Wrapped and unwrapped tokens never attend to each other
   (the shifted-window mask, computed from coordinates). ``t = 0`` disables it.
3. **Windows.** Rolled positions are cut into non-overlapping windows ``[j*w, (j+1)*w)``, starting at
   0; the last window of a group is ragged when ``w`` does not divide ``n_g``. Its missing slots are
   padding: never attended to, never written. A window with ``w >= n_g`` spans the whole group, so a
   dilated group with such a window attends across the whole feature map (D-Former's dilated scope).
4. **Blocks.** A 3-D block is one (group, window) per axis; its ``wd*wh*ww`` slots are ordered
   ``(rd, rh, rw)`` row-major with ``r = p - j*w`` the position in the window. Query token ``a`` attends
   to key token ``b`` iff they share the block and, on every axis, the same wrapped flag.
5. **Bias.** With ``Δ = r_a - r_b`` per axis (window coordinates; for dilated groups, strided
   coordinates) the score gets ``table[head, ((Δd+wd-1)*(2wh-1) + (Δh+wh-1))*(2ww-1) + (Δw+ww-1)]``.
6. **Softmax** scale is ``1/sqrt(head_dim)``; accumulation is fp32, the output has the input dtype.

Supported inputs (both backends): q, k, v of shape ``[B, D, H, W, heads, head_dim]`` with equal shape,
dtype and device, ``head_dim`` in :data:`HEAD_DIMS`, dtype in :data:`DTYPES` (float64 on the reference
backend only, for gradcheck). The bias table is ``[heads, (2wd-1)(2wh-1)(2ww-1)]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DTYPES", "HEAD_DIMS", "Partition", "bias_table_size", "check_inputs"]

HEAD_DIMS: tuple[int, ...] = (16, 32, 64, 128)
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)

Triple = tuple[int, int, int]


def _triple(name: str, value: object, minimum: int) -> Triple:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in value)):
        raise ValueError(f"Partition.{name}={value!r}: expected an int or three ints (d, h, w)")
    if min(value) < minimum:
        raise ValueError(f"Partition.{name}={tuple(value)!r}: every entry must be >= {minimum}")
    return (int(value[0]), int(value[1]), int(value[2]))


@dataclass(frozen=True)
class Partition:
    """How the ``D x H x W`` token grid is cut into attention blocks (see the module docstring).

    Attributes:
        window: ``(wd, wh, ww)`` window size in (strided) tokens; an int means a cube.
        dilation: ``(sd, sh, sw)`` group stride, or None for plain local windows.
        shift: ``(td, th, tw)`` cyclic shift with ``0 <= t < w``, or None for no shift.
    """

    window: Triple
    dilation: Triple | None = None
    shift: Triple | None = None

    def __post_init__(self) -> None:
        window = _triple("window", self.window, 1)
        object.__setattr__(self, "window", window)
        if self.dilation is not None:
            object.__setattr__(self, "dilation", _triple("dilation", self.dilation, 1))
        if self.shift is not None:
            shift = _triple("shift", self.shift, 0)
            if any(t >= w for t, w in zip(shift, window)):
                raise ValueError(f"Partition.shift={shift!r}: each shift must be smaller than the window {window!r}")
            object.__setattr__(self, "shift", shift)

    @property
    def strides(self) -> Triple:
        """The dilation, ``(1, 1, 1)`` when None."""
        return self.dilation or (1, 1, 1)

    @property
    def shifts(self) -> Triple:
        """The shift, ``(0, 0, 0)`` when None."""
        return self.shift or (0, 0, 0)

    @property
    def block_size(self) -> int:
        """Slots per block, ``wd * wh * ww`` (padding slots of ragged blocks included)."""
        wd, wh, ww = self.window
        return wd * wh * ww


def bias_table_size(window: Triple) -> int:
    """Entries per head of the relative-position table: ``(2wd-1)(2wh-1)(2ww-1)``."""
    wd, wh, ww = window
    return (2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partition: Partition,
                 bias_table: torch.Tensor | None, *, allow_float64: bool = False) -> None:
    """Raise ValueError (one line) unless the inputs are valid for blocked 3-D attention.

    Args:
        q, k, v: ``[B, D, H, W, heads, head_dim]`` each, same shape, dtype and device.
        partition: the :class:`Partition`.
        bias_table: ``[heads, (2wd-1)(2wh-1)(2ww-1)]`` or None.
        allow_float64: accept float64 (reference backend, for gradcheck).
    """
    if not isinstance(partition, Partition):
        raise ValueError(f"partition must be a medattn.kernels.Partition, got {type(partition).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 6:
        raise ValueError(f"q has shape {tuple(q.shape)}: expected 6 dims [B, D, H, W, heads, head_dim]")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    allowed = (*DTYPES, torch.float64) if allow_float64 else DTYPES
    if q.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ValueError(f"unsupported dtype {str(q.dtype).removeprefix('torch.')}: expected one of {names}")
    head_dim = q.shape[-1]
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"unsupported head_dim {head_dim}: expected one of {', '.join(map(str, HEAD_DIMS))}")
    if min(q.shape[:5]) < 1:
        raise ValueError(f"q has shape {tuple(q.shape)}: every dimension must be >= 1")
    if bias_table is not None:
        expected = (q.shape[4], bias_table_size(partition.window))
        if not isinstance(bias_table, torch.Tensor) or tuple(bias_table.shape) != expected:
            got = tuple(bias_table.shape) if isinstance(bias_table, torch.Tensor) else type(bias_table).__name__
            raise ValueError(f"bias_table has shape {got}: expected {expected} = [heads, (2wd-1)(2wh-1)(2ww-1)] "
                             f"for window {partition.window}")
        if not bias_table.is_floating_point():
            raise ValueError(f"bias_table has dtype {bias_table.dtype}: expected a floating-point tensor")
        if bias_table.device != q.device:
            raise ValueError(f"bias_table is on {bias_table.device} but q is on {q.device}")
