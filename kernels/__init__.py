"""medattn.kernels: medattn's fused attention kernels (Triton) and their PyTorch reference path.

This folder is the top-level ``kernels/`` of the repository and is installed as the
sub-package ``medattn.kernels``. Public API:

- :func:`blocked_attention3d` (``dispatch.py``): attention inside 3-D blocks of a
  ``[B, D, H, W, heads, head_dim]`` token grid (local windows, dilated groups, cyclic shift,
  relative-position bias), Triton on CUDA and the PyTorch reference on CPU;
- :class:`Partition` (``spec.py``, which also documents the exact semantics) and
  :func:`bias_table_size`;
- :func:`reference_blocked_attention3d` (``reference.py``): the pure-PyTorch definition;
- :func:`available_backends`, :func:`selected_backend`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

__all__ = [
    "Partition",
    "available_backends",
    "bias_table_size",
    "blocked_attention3d",
    "reference_blocked_attention3d",
    "selected_backend",
]

# Imported lazily (PEP 562) so that ``import medattn.kernels`` stays light and needs no torch.
_LAZY = {
    "Partition": ".spec",
    "bias_table_size": ".spec",
    "blocked_attention3d": ".dispatch",
    "reference_blocked_attention3d": ".reference",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_VALID = ("reference", "triton")


def available_backends() -> dict[str, bool]:
    """Which attention backends can run here: ``reference`` always, ``triton`` needs triton + CUDA."""
    triton_ok = importlib.util.find_spec("triton") is not None
    cuda_ok = False
    if triton_ok:
        import torch

        cuda_ok = torch.cuda.is_available()
    return {"reference": True, "triton": triton_ok and cuda_ok}


def selected_backend(device_type: str) -> str:
    """Backend used for tensors on ``device_type`` ("cpu" or "cuda").

    ``MEDATTN_ATTENTION=reference|triton`` overrides the default (triton on CUDA, reference on CPU).

    Raises:
        ValueError: the environment variable holds an unknown backend name.
    """
    forced = os.environ.get("MEDATTN_ATTENTION", "").strip().lower()
    if forced:
        if forced not in _VALID:
            raise ValueError(f"MEDATTN_ATTENTION={forced!r}: expected one of {', '.join(_VALID)}")
        return forced
    return "triton" if device_type == "cuda" else "reference"
