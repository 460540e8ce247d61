"""Device selection for one process (inference, feature extraction, explanations).

Multi-process runs choose their device per local rank in :func:`medattn.engine.distributed.device_for`.
"""

from __future__ import annotations

import torch

from medattn.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str) -> torch.device:
    """One process's device: ``"auto"`` → CUDA when available, else CPU; otherwise the named device,
    which must exist (ConfigError otherwise). Used by inference, feature extraction and explanations."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available")
    return dev
