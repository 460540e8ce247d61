"""Self-describing, atomically written checkpoints.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(path, weights_only=True)`` (no pickled code). Keys:

=================  ==========================================================================
``format``         ``"medattn-checkpoint"``; ``format_version``: 1
``medattn``        the medattn version that wrote it
``model``          ``{"name": registry name, "kwargs": {...}}``  (rebuilt through the registry)
``state_dict``     model weights
``labels``         ``{"0": "background", "1": ...}``
``channels``       channel names, in order
``spatial_dims``   2 or 3
``preprocess``     ``{"orientation", "target_spacing", "normalization", "zscore_nonzero", "ct_window"}``
``patch_size``     sliding-window ROI
``infer``          default inference settings (overlap, blend, tta, sw_batch_size)
``config``         the resolved run config (plain data)
``train_state``    optional: optimizer, scheduler, scaler, RNG states, epoch, history, best metric
=================  ==========================================================================

MIL checkpoints say ``kind: "mil"`` and hold ``model``, ``state_dict``, ``task``, ``encoder`` and
``patch`` (see :mod:`medattn.engine.mil_checkpoint`) instead of the segmentation keys.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medattn import __version__
from medattn.errors import CheckpointError
from medattn.io.atomic import atomic_path

FORMAT = "medattn-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("model", "state_dict", "labels", "spatial_dims", "preprocess", "patch_size")
#: keys a checkpoint of each ``kind`` must hold (segmentation checkpoints carry no ``kind`` key)
REQUIRED_BY_KIND = {"segmentation": REQUIRED, "mil": ("model", "state_dict", "task", "encoder", "patch")}


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    """``"segmentation"`` or ``"mil"``: which pipeline wrote the checkpoint."""
    return str(ckpt.get("kind", "segmentation"))


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` atomically (temp file, fsync, rename); adds format and version keys."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "medattn": __version__, **payload}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it is a medattn checkpoint.

    Raises:
        CheckpointError: missing, truncated/corrupt, or not a medattn checkpoint — naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such checkpoint file", path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint (corrupt or truncated?): {reason}", path) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError("not a medattn checkpoint", path)
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"written by a newer medattn ({ckpt.get('medattn')}); upgrade medattn", path)
    kind = checkpoint_kind(ckpt)
    if kind not in REQUIRED_BY_KIND:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}", path)
    missing = [k for k in REQUIRED_BY_KIND[kind] if k not in ckpt]
    if missing:
        raise CheckpointError(f"incomplete checkpoint, missing {', '.join(missing)}", path)
    return ckpt


def labels_from_checkpoint(ckpt: dict[str, Any]) -> dict[int, str]:
    """Label map ``{value: name}`` stored in a checkpoint."""
    return {int(k): str(v) for k, v in ckpt["labels"].items()}


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states in a weights_only-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
