"""Patch encoders: a batch of RGB patches ``[B, 3, H, W]`` in ``[0, 1]`` → feature vectors ``[B, dim]``.

Two are built in (:func:`create_encoder` picks one by ``encoder.name``):

- ``handcrafted`` (:class:`medattn.data.handcrafted.HandcraftedEncoder`): colour and texture statistics,
  no weights, the default;
- ``cnn`` (:class:`CnnEncoder`): a MONAI ResNet or DenseNet121 whose globally pooled features are the
  embedding, with weights from a local file named in the config. Nothing is ever downloaded.

Each encoder has a ``name``, a ``version`` (stored in every bag, so that bags made by a different
encoder or different weights are recomputed) and ``dim``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medattn.config.mil_schema import EncoderConfig
from medattn.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEncoder(nn.Module):
    """Base class: ``forward`` maps ``[B, 3, H, W]`` float in ``[0, 1]`` to ``[B, dim]`` float32."""

    name: str = "encoder"
    version: str = "0"
    dim: int = 0
    #: True for small CPU encoders that feature extraction may copy into its DataLoader workers
    encode_in_workers: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.kwargs: dict[str, Any] = {}
        self.weights: str | None = None

    def describe(self) -> dict[str, Any]:
        """What a MIL checkpoint records about the encoder: name, version, kwargs, weights, dim."""
        return {"name": self.name, "version": self.version, "kwargs": dict(self.kwargs),
                "weights": self.weights, "dim": self.dim}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


_RESNETS = {"resnet10": ("basic", [1, 1, 1, 1]), "resnet18": ("basic", [2, 2, 2, 2]),
            "resnet34": ("basic", [3, 4, 6, 3]), "resnet50": ("bottleneck", [3, 4, 6, 3])}
NETWORKS = (*_RESNETS, "densenet121")


def _build_network(network: str) -> tuple[nn.Module, int]:
    """A 2-D MONAI network without its classification layer, and its feature dimension."""
    from monai.networks.nets import DenseNet121, ResNet

    if network in _RESNETS:
        block, layers = _RESNETS[network]
        # torchvision-compatible stem (7×7 stride-2 conv, no bias in the shortcut), so ImageNet
        # ResNet state dicts load as they are
        net = ResNet(block, layers, [64, 128, 256, 512], spatial_dims=2, n_input_channels=3, conv1_t_size=7,
                     conv1_t_stride=2, feed_forward=False, bias_downsample=False)
        return net, 512 * (4 if block == "bottleneck" else 1)
    return DenseNet121(spatial_dims=2, in_channels=3, out_channels=1), 1024


def _state_dict_from(obj: Any, path: Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError("encoder weights: expected a state_dict (or {'state_dict': ...}) of tensors", path)
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.pt``/``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("encoder weights file not found (weights are never downloaded; "
                          "set encoder.weights to a local .pt/.pth/.safetensors file)", path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError("reading .safetensors needs the 'safetensors' package (pip install safetensors)",
                              path) from None
        try:
            return _state_dict_from(load_file(str(path), device="cpu"), path)
        except Exception as e:  # safetensors raises its own error types
            raise ConfigError(f"cannot read encoder weights: {str(e).splitlines()[0]}", path) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of many kinds; the user needs the one line
        raise ConfigError(f"cannot read encoder weights: {str(e).splitlines()[0]}", path) from e
    return _state_dict_from(obj, path)


class CnnEncoder(PatchEncoder):
    """A MONAI CNN (``resnet10/18/34/50`` or ``densenet121``) as a patch encoder.

    Input ``[B, 3, H, W]`` in ``[0, 1]`` is optionally resized to ``input_size`` and normalised with
    the ImageNet mean/std (``imagenet_norm``); the output is the globally average-pooled last feature
    map, ``[B, 512]`` (resnet10/18/34), ``[B, 2048]`` (resnet50) or ``[B, 1024]`` (densenet121).
    """

    name = "cnn"

    def __init__(self, weights: str | Path, network: str = "resnet18", imagenet_norm: bool = True,
                 input_size: int | None = None) -> None:
        super().__init__()
        if network not in NETWORKS:
            raise ConfigError(f"encoder.kwargs.network: unknown network {network!r} (choose from "
                              f"{', '.join(NETWORKS)})")
        self.net, self.dim = _build_network(network)
        path = Path(weights)
        state = load_weights_file(path)
        own = self.net.state_dict()
        # a classifier's head (fc / class_layers.out) is not part of the encoder
        state = {k: v for k, v in state.items() if k in own or not k.startswith(("fc.", "class_layers.out."))}
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            parts = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                     for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                     if keys]
            raise ConfigError(f"encoder weights do not fit a MONAI {network} ({'; '.join(parts)})", path)
        self.net.load_state_dict(state)
        self.net.eval()
        self.network, self.imagenet_norm, self.input_size = network, imagenet_norm, input_size
        self.version = f"{network}-{sha256_file(path)[:16]}"
        self.kwargs = {"network": network, "imagenet_norm": imagenet_norm, "input_size": input_size}
        self.weights = str(path)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, patches: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in ``[0, 1]`` → ``[B, dim]`` float32."""
        x = patches.float()
        if self.input_size is not None and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        if self.imagenet_norm:
            x = (x - self.mean) / self.std
        if self.network == "densenet121":
            x = F.adaptive_avg_pool2d(F.relu(self.net.features(x)), 1).flatten(1)
        else:
            x = self.net(x)
        return x.float()


def create_encoder(cfg: EncoderConfig) -> PatchEncoder:
    """The encoder named by ``cfg.name`` with ``cfg.kwargs`` (in eval mode, on the CPU).

    Raises:
        ConfigError: an unknown name or keyword, or (``cnn``) a missing/unreadable/mismatched weights file.
    """
    from medattn.data.handcrafted import HandcraftedEncoder

    kwargs = dict(cfg.kwargs)
    if cfg.name == "handcrafted":
        if kwargs:
            raise ConfigError(f"encoder.kwargs: the handcrafted encoder takes no options, got {', '.join(kwargs)}")
        return HandcraftedEncoder().eval()
    if cfg.name == "cnn":
        allowed = {"network", "imagenet_norm", "input_size"}
        if set(kwargs) - allowed:
            raise ConfigError(f"encoder.kwargs: unknown option(s) {', '.join(sorted(set(kwargs) - allowed))} "
                              f"for the cnn encoder (allowed: {', '.join(sorted(allowed))})")
        if not cfg.weights:
            raise ConfigError("encoder.weights: the cnn encoder needs a local weights file (.pt/.pth/.safetensors);"
                              " nothing is downloaded")
        return CnnEncoder(cfg.weights, **kwargs).eval()
    raise ConfigError(f"encoder.name: unknown encoder {cfg.name!r} (choose from handcrafted, cnn)")
