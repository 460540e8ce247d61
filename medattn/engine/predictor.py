"""The predictor: load a checkpoint's model once, then segment many cases on their original grids.

One case goes through::

    read + preprocess   the checkpoint's own deterministic transforms (orientation, spacing, intensity)
    sliding window      class probabilities (K, *canonical) on the preprocessed grid
    resample            probabilities back onto the input's grid through the two affines (linear)
    argmax              label map (X, Y[, Z]) on the input's grid

Probabilities are resampled before the argmax (as nnU-Net does), so the labels on the input grid are
smooth rather than the staircase of nearest-neighbour label resampling. :meth:`Predictor.prepare` (CPU
work: reading and preprocessing) is separate from :meth:`Predictor.run` (model work) so that a caller
can prepare the next case in a background thread while the current one is predicted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medattn.data.transforms import affine_4x4, preprocessing, resolve_orientation
from medattn.devices import resolve_device
from medattn.engine.checkpoint import REQUIRED, checkpoint_kind, labels_from_checkpoint, load_checkpoint
from medattn.engine.resample import resample_to_grid
from medattn.engine.sliding import sliding_window_probabilities
from medattn.errors import CheckpointError, ConfigError, DataError, find_user_error
from medattn.io import Image, read_image
from medattn.models import create_model

BLENDS = ("gaussian", "constant")
_DEFAULTS: dict[str, Any] = {"overlap": 0.5, "blend": "gaussian", "tta": False, "sw_batch_size": 2}


@dataclass
class Prediction:
    """The segmentation of one case, on the grid of its (first) input file.

    Attributes:
        label: (X, Y[, Z]) class index per voxel; uint8, or uint16 for more than 256 classes.
        probabilities: (K, X, Y[, Z]) float32 softmax probabilities (sum to 1 over K).
        reference: the first channel's :class:`medattn.io.Image` (geometry and header for writing).
        timings: seconds per step: ``read``, ``preprocess``, ``predict``, ``resample``, ``total``.
    """

    label: np.ndarray
    probabilities: np.ndarray
    reference: Image
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class PreparedCase:
    """A case read and preprocessed, ready for :meth:`Predictor.run`.

    Attributes:
        paths: the channel files (or DICOM folders), in channel order.
        image: (C, *canonical) float32 tensor on the preprocessed grid (CPU).
        canonical_affine: 4×4 RAS affine of the preprocessed grid.
        reference: the first channel as read (original grid, geometry, header).
        timings: ``read`` and ``preprocess`` seconds.
    """

    paths: tuple[Path, ...]
    image: torch.Tensor
    canonical_affine: np.ndarray
    reference: Image
    timings: dict[str, float]


class Predictor:
    """Loads the model ONCE and predicts many cases (nnU-Net's predictor idea).

    Args:
        checkpoint: a checkpoint file (see :mod:`medattn.engine.checkpoint`) or its loaded dict.
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:N".
        overlap, blend, tta, sw_batch_size: sliding-window settings; None takes the checkpoint's
            ``infer`` defaults (and, failing those, 0.5 / "gaussian" / False / 2).

    Attributes:
        labels: ``{class index: name}``; class indices are the model's output channels.
        channels: channel names, in input order.
        spatial_dims: 2 or 3.
        settings: the resolved ``overlap``, ``blend``, ``tta``, ``sw_batch_size``.
        infer_defaults: the checkpoint's ``infer`` section as stored (e.g. ``save_probabilities``).
        model_name: registry name of the network.

    Raises:
        CheckpointError: missing/corrupt/non-medattn checkpoint, or weights that do not fit the model.
        ConfigError: invalid settings or device.
    """

    def __init__(self, checkpoint: str | Path | dict, device: str = "auto", overlap: float | None = None,
                 blend: str | None = None, tta: bool | None = None, sw_batch_size: int | None = None) -> None:
        if isinstance(checkpoint, Mapping):
            ckpt, self.checkpoint_path = dict(checkpoint), None
            missing = [k for k in REQUIRED if k not in ckpt]
            if missing:
                raise CheckpointError(f"incomplete checkpoint, missing {', '.join(missing)}")
        else:
            self.checkpoint_path = Path(checkpoint)
            ckpt = load_checkpoint(self.checkpoint_path)
        where = self.checkpoint_path
        if checkpoint_kind(ckpt) != "segmentation":
            raise CheckpointError(f"a {checkpoint_kind(ckpt)} checkpoint, not a segmentation one", where)
        self.device = resolve_device(device)
        self.labels: dict[int, str] = labels_from_checkpoint(ckpt)
        self.spatial_dims: int = int(ckpt["spatial_dims"])
        self.model_name: str = str(ckpt["model"]["name"])
        kwargs = dict(ckpt["model"].get("kwargs") or {})
        self.channels: list[str] = [str(c) for c in ckpt.get("channels") or []] or [
            f"channel_{i}" for i in range(int(kwargs.get("in_channels", 1)))]
        self.patch_size: list[int] = [int(p) for p in ckpt["patch_size"]]
        if len(self.patch_size) != self.spatial_dims:
            raise CheckpointError(f"patch_size {self.patch_size} does not have {self.spatial_dims} axes",
                                  where)
        self.preprocess: dict[str, Any] = dict(ckpt["preprocess"])
        self.infer_defaults: dict[str, Any] = dict(ckpt.get("infer") or {})
        self.settings: dict[str, Any] = self._settings(self.infer_defaults, overlap, blend, tta,
                                                       sw_batch_size)
        self._transforms = self._build_transforms(where)
        try:
            model = create_model(self.model_name, **kwargs)
        except ConfigError as e:
            raise CheckpointError(f"cannot rebuild the model: {e}", where) from e
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0][:200]
            raise CheckpointError(f"weights do not fit model '{self.model_name}': {first}", where) from e
        self.model = model.to(self.device).eval()

    @staticmethod
    def _settings(defaults: Mapping[str, Any], overlap: float | None, blend: str | None, tta: bool | None,
                  sw_batch_size: int | None) -> dict[str, Any]:
        given = {"overlap": overlap, "blend": blend, "tta": tta, "sw_batch_size": sw_batch_size}
        s = {k: given[k] if given[k] is not None else defaults.get(k, _DEFAULTS[k]) for k in _DEFAULTS}
        s = {"overlap": float(s["overlap"]), "blend": str(s["blend"]), "tta": bool(s["tta"]),
             "sw_batch_size": int(s["sw_batch_size"])}
        if not 0.0 <= s["overlap"] < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), got {s['overlap']}")
        if s["blend"] not in BLENDS:
            raise ConfigError(f"blend must be one of {', '.join(BLENDS)}, got '{s['blend']}'")
        if s["sw_batch_size"] < 1:
            raise ConfigError(f"sw_batch_size must be >= 1, got {s['sw_batch_size']}")
        return s

    def _build_transforms(self, where: Path | None) -> list:
        p = self.preprocess
        spacing = p.get("target_spacing")
        if isinstance(spacing, str) or (spacing and len(spacing) != self.spatial_dims):
            raise CheckpointError(f"preprocess.target_spacing {spacing!r} is not {self.spatial_dims} numbers",
                                  where)
        try:
            orientation = resolve_orientation(p.get("orientation"), self.spatial_dims)
        except DataError as e:
            raise CheckpointError(str(e), where) from e
        normalization = p.get("normalization")
        if normalization not in ("zscore", "ct", "none"):
            raise CheckpointError(f"preprocess.normalization {normalization!r} is not zscore, ct or none",
                                  where)
        kwargs: dict[str, Any] = {"zscore_nonzero": bool(p.get("zscore_nonzero", True))}
        if p.get("ct_window") is not None:
            kwargs["ct_window"] = tuple(float(v) for v in p["ct_window"])
        return preprocessing(orientation, [float(s) for s in spacing] if spacing else None,
                             normalization, with_label=False, **kwargs)

    def prepare(self, image_paths: Sequence[str | Path]) -> PreparedCase:
        """Read and preprocess one case (CPU only; safe to call from a worker thread).

        Args:
            image_paths: the case's channel files in channel order (one per checkpoint channel), or
                one file holding all channels.

        Raises:
            DataError: wrong number of channels, wrong dimensionality, unreadable or mismatched files.
        """
        paths = tuple(Path(p) for p in image_paths)
        n = len(self.channels)
        if not paths:
            raise DataError("a case needs at least one image file")
        if len(paths) not in (1, n):
            raise DataError(f"the model expects {n} channel file(s) ({', '.join(self.channels)}), "
                            f"got {len(paths)} for this case", paths[0])
        t0 = time.perf_counter()
        reference = read_image(paths[0])
        if reference.geometry.ndim != self.spatial_dims:
            raise DataError(f"the model is {self.spatial_dims}-D but the image is "
                            f"{reference.geometry.ndim}-D", paths[0])
        t1 = time.perf_counter()
        d: dict[str, Any] = {"image": [reference, *(str(p) for p in paths[1:])]}  # channel 0 read once
        try:
            for t in self._transforms:
                d = t(d)
        except Exception as e:
            known = find_user_error(e)
            if known is not None:
                raise known from e
            raise DataError(f"cannot preprocess: {type(e).__name__}: {str(e).strip()[:160]}", paths[0]) from e
        image = d["image"]
        if image.shape[0] != n:
            raise DataError(f"the model expects {n} channel(s) ({', '.join(self.channels)}), "
                            f"the case has {image.shape[0]}", paths[0])
        affine = np.asarray(image.affine, dtype=np.float64)
        tensor = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        timings = {"read": t1 - t0, "preprocess": time.perf_counter() - t1}
        return PreparedCase(paths, tensor.float().contiguous(), affine, reference, timings)

    def run(self, case: PreparedCase) -> Prediction:
        """Predict a prepared case and map the result back onto its original grid."""
        timings = dict(case.timings)
        t0 = time.perf_counter()
        x = case.image.unsqueeze(0).to(self.device)
        s = self.settings
        probs = sliding_window_probabilities(self.model, x, self.patch_size, overlap=s["overlap"],
                                             blend=s["blend"], sw_batch_size=s["sw_batch_size"],
                                             tta=s["tta"])[0]
        del x
        self._sync()
        t1 = time.perf_counter()
        ref = case.reference
        probs = resample_to_grid(probs, case.canonical_affine, affine_4x4(ref.geometry), ref.spatial_shape,
                                 mode="bilinear")
        label = torch.argmax(probs, dim=0)
        dtype = np.uint8 if probs.shape[0] <= 256 else np.uint16
        label_np = label.cpu().numpy().astype(dtype)
        probs_np = probs.cpu().numpy().astype(np.float32, copy=False)
        timings["predict"] = t1 - t0
        timings["resample"] = time.perf_counter() - t1
        timings["total"] = sum(timings[k] for k in ("read", "preprocess", "predict", "resample"))
        return Prediction(label_np, probs_np, ref, timings)

    def predict(self, image_paths: Sequence[str | Path]) -> Prediction:
        """Segment one case.

        Args:
            image_paths: the case's channel files (or DICOM series folders) in channel order; their
                number must equal ``len(self.channels)`` (or be 1 for a file holding every channel).

        Returns:
            :class:`Prediction` on the grid of ``image_paths[0]``: ``label`` (X, Y[, Z]) and
            ``probabilities`` (K, X, Y[, Z]).

        Raises:
            DataError: the case cannot be read or does not fit the model — naming the file.
        """
        return self.run(self.prepare(image_paths))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
