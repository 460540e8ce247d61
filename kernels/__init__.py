"""medattn.kernels: medattn's fused attention kernels (Triton) and their PyTorch reference path.

This folder is the top-level ``kernels/`` of the repository and is installed as the
sub-package ``medattn.kernels``. The blocked 3-D attention op (local windows, dilated groups,
shifted windows, relative-position bias) lands here with its Triton kernels, reference and
dispatcher; :func:`available_backends` already tells which backends this machine can run.
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["available_backends", "selected_backend"]

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
