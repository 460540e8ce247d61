"""MIL checkpoints: everything slide inference needs, in a weights_only-loadable file.

Written with :func:`medattn.engine.checkpoint.save_checkpoint` (atomic; plain dicts, lists, numbers,
strings and tensors only). Keys besides ``format``/``format_version``/``medattn``:

=============  ===================================================================================
``kind``       ``"mil"`` (segmentation checkpoints have no ``kind``)
``model``      ``{"name": registry name, "kwargs": {in_dim, n_outputs, ...}}``
``state_dict`` the weights (on CPU)
``task``       ``{"type", "survival_loss", "n_bins", "classes", "bin_edges"}``
``encoder``    ``{"name", "version", "kwargs", "weights", "dim"}``: the patch encoder the bags came from
``slide``, ``tissue``, ``patch``, ``infer``: those config sections (plain dicts), to make a slide's bag
               exactly as in training
``config``     the full resolved MIL config (plain dict)
extra keys     whatever the caller adds (``fold``, ``seed``, ``train_state``, ...)
=============  ===================================================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medattn.config import build_dataclass, config_from_dict, config_to_dict
from medattn.config.mil_schema import MilConfig, MilInferConfig, PatchConfig, SlideConfig, TissueConfig
from medattn.devices import resolve_device
from medattn.engine.checkpoint import checkpoint_kind, load_checkpoint, save_checkpoint
from medattn.errors import CheckpointError, ConfigError
from medattn.models.mil_heads import output_names, outputs_from_logits
from medattn.models.registry import create_model

TASK_KEYS = ("type", "survival_loss", "n_bins", "classes", "bin_edges")
ENCODER_KEYS = ("name", "version", "kwargs", "weights", "dim")


def plain(obj: Any) -> Any:
    """``obj`` with NumPy values, tuples and paths turned into Python numbers, lists and strings."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_mil_checkpoint(path: str | Path, model: nn.Module, cfg: MilConfig, task: dict[str, Any],
                        encoder: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write a MIL checkpoint atomically; returns ``path``.

    Args:
        model: the bag model (a DDP wrapper is unwrapped). Its constructor kwargs are taken from
            ``model.init_kwargs`` (set by :class:`~medattn.models.abmil.GatedABMIL`), else ``cfg.model.kwargs``.
        cfg: the run's MIL config (model name, slide/tissue/patch/infer sections, the full config).
        task: ``{type, survival_loss, n_bins, classes, bin_edges}``; missing keys come from ``cfg``
            (``cfg.task``, ``cfg.data.classes``; ``bin_edges`` None).
        encoder: ``{name, version, kwargs, weights, dim}``; missing keys come from ``cfg.encoder``.
        extra: more top-level keys (fold, seed, train_state, ...); must be plain data or tensors.
    """
    net = _unwrap(model)
    kwargs = dict(getattr(net, "init_kwargs", None) or cfg.model.kwargs)
    task_full = {"type": cfg.task.type, "survival_loss": cfg.task.survival_loss, "n_bins": cfg.task.n_bins,
                 "classes": list(cfg.data.classes), "bin_edges": None, **task}
    encoder_full = {"name": cfg.encoder.name, "version": "", "kwargs": dict(cfg.encoder.kwargs),
                    "weights": cfg.encoder.weights, "dim": kwargs.get("in_dim"), **encoder}
    payload: dict[str, Any] = {
        "kind": "mil",
        "model": {"name": cfg.model.name, "kwargs": plain(kwargs)},
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "task": plain(task_full),
        "encoder": plain(encoder_full),
        "slide": plain(dataclasses.asdict(cfg.slide)),
        "tissue": plain(dataclasses.asdict(cfg.tissue)),
        "patch": plain(dataclasses.asdict(cfg.patch)),
        "infer": plain(dataclasses.asdict(cfg.infer)),
        "config": plain(config_to_dict(cfg)),
    }
    if extra:
        clash = set(extra) & set(payload)
        if clash:
            raise ValueError(f"save_mil_checkpoint: extra keys {sorted(clash)} would replace checkpoint keys")
        payload.update(extra)
    return save_checkpoint(payload, path)


@dataclass
class MilModel:
    """A loaded MIL checkpoint: the model (eval mode, on its device) and the settings that made its bags."""

    model: nn.Module
    task: dict[str, Any]
    classes: list[str]
    output_names: list[str]
    encoder: dict[str, Any]
    slide: SlideConfig
    tissue: TissueConfig
    patch: PatchConfig
    infer: MilInferConfig
    config: MilConfig
    path: Path | None
    sha256: str

    @property
    def device(self) -> torch.device:
        """The device the model's parameters are on."""
        return next(self.model.parameters()).device

    def outputs(self, logits: Tensor) -> Tensor:
        """Logits [B, C] → outputs [B, K] (probabilities or risk) for this checkpoint's task."""
        return outputs_from_logits(logits, self.task["type"], self.task.get("survival_loss", "nll"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _section(cls: type, data: Any, name: str, path: Path) -> Any:
    if not isinstance(data, dict):
        raise CheckpointError(f"MIL checkpoint section {name!r} is not a mapping", path)
    try:
        return build_dataclass(cls, data, name, str(path))
    except ConfigError as e:
        raise CheckpointError(f"MIL checkpoint section {name!r} is invalid: {e}") from e


def load_mil_checkpoint(path: str | Path, device: str = "cpu") -> MilModel:
    """Load a MIL checkpoint (``torch.load(weights_only=True)``) and rebuild its model via the registry.

    Args:
        device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).

    Raises:
        CheckpointError: missing, corrupt, a segmentation checkpoint, or weights that do not fit the model.
    """
    path = Path(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    kind = checkpoint_kind(ckpt)
    if kind != "mil":
        raise CheckpointError(f"a {kind} checkpoint, not a MIL one (use it with a segmentation command)", path)
    spec = ckpt["model"]
    try:
        model = create_model(str(spec["name"]), **dict(spec.get("kwargs") or {}))
        model.load_state_dict(ckpt["state_dict"])
    except (ConfigError, KeyError, TypeError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot rebuild the MIL model: {reason}", path) from e
    model = model.to(resolve_device(device)).eval()
    task = dict(ckpt["task"])
    if task.get("type") not in ("classification", "survival"):
        raise CheckpointError(f"MIL checkpoint has an unknown task type {task.get('type')!r}", path)
    classes = [str(c) for c in task.get("classes") or []]
    try:
        config = config_from_dict({**ckpt.get("config", {}), "pipeline": "mil"}, str(path))
    except ConfigError as e:
        raise CheckpointError(f"MIL checkpoint holds an invalid config: {e}") from e
    return MilModel(
        model=model, task=task, classes=classes, output_names=output_names(task["type"], classes),
        encoder=dict(ckpt["encoder"]), slide=_section(SlideConfig, ckpt.get("slide", {}), "slide", path),
        tissue=_section(TissueConfig, ckpt.get("tissue", {}), "tissue", path),
        patch=_section(PatchConfig, ckpt["patch"], "patch", path),
        infer=_section(MilInferConfig, ckpt.get("infer", {}), "infer", path),
        config=config, path=path, sha256=_sha256(path))


def is_mil_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a readable medattn checkpoint of kind ``"mil"`` (memory-mapped, cheap).

    Anything else (missing, corrupt, segmentation) is False: the caller's loader reports the problem.
    """
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file is "not a MIL checkpoint" here
        return False
    return isinstance(ckpt, dict) and ckpt.get("kind") == "mil"
