"""In-memory bags of patch features for MIL training, and padded, masked batches of them.

Every bag is loaded once (float32) and shared by all folds and seeds; a :class:`BagDataset` is a view
of some of them (by index) with their targets. Training views can draw ``max_patches`` random
patches per bag and step; the draw is seeded by ``(seed, epoch, bag index)``, so it does not depend
on which process or in which batch a bag is drawn (exact resume, and N processes × batch b equal
one process × batch N·b).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

#: per-bag targets a dataset carries (zeros where the task has none)
TARGETS = ("label", "time", "event", "bin")


class BagDataset(Dataset):
    """Bags ``features[i]`` (``[N_i, D]`` float32 tensors) with their targets, viewed through ``indices``.

    Args:
        features: all bags of the run (shared, not copied).
        targets: ``{"label": [B] int, "time": [B] float, "event": [B] int, "bin": [B] int}`` over all
            bags; missing keys are zeros.
        indices: which bags this dataset holds (default: all).
        max_patches: draw this many random patches per bag and item (None: every patch).
        seed: seed of the patch draws.
    """

    def __init__(self, features: Sequence[torch.Tensor], targets: dict[str, Any] | None = None,
                 indices: Sequence[int] | np.ndarray | None = None, max_patches: int | None = None,
                 seed: int = 0) -> None:
        self.features = features
        self.indices = np.arange(len(features)) if indices is None else np.asarray(indices, dtype=np.int64)
        n = len(features)
        targets = targets or {}
        self.targets = {k: np.asarray(targets[k]) if k in targets and targets[k] is not None else np.zeros(n)
                        for k in TARGETS}
        self.max_patches = max_patches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose patch draws :meth:`__getitem__` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """``{"index": bag index in the run, "features": [n, D], "label", "time", "event", "bin"}``."""
        b = int(self.indices[i])
        x = self.features[b]
        if self.max_patches is not None and x.shape[0] > self.max_patches:
            rng = np.random.default_rng([self.seed, self.epoch, b])
            keep = np.sort(rng.choice(x.shape[0], self.max_patches, replace=False))
            x = x[torch.from_numpy(keep)]
        return {"index": b, "features": x, **{k: self.targets[k][b] for k in TARGETS}}


def collate_bags(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad a list of bags to the largest one.

    Returns:
        ``features`` [B, Nmax, D] float32 (zeros where padded), ``mask`` [B, Nmax] bool (True = real
        patch), ``index`` [B] long, ``label`` [B] long, ``time`` [B] float32, ``event`` [B] float32,
        ``bin`` [B] long.
    """
    sizes = [int(it["features"].shape[0]) for it in items]
    dim = int(items[0]["features"].shape[1])
    n_max = max(sizes)
    feats = torch.zeros(len(items), n_max, dim, dtype=torch.float32)
    mask = torch.zeros(len(items), n_max, dtype=torch.bool)
    for j, (it, n) in enumerate(zip(items, sizes)):
        feats[j, :n] = torch.as_tensor(it["features"], dtype=torch.float32)
        mask[j, :n] = True
    return {
        "features": feats, "mask": mask,
        "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
        "label": torch.tensor([int(it["label"]) for it in items], dtype=torch.long),
        "time": torch.tensor([float(it["time"]) for it in items], dtype=torch.float32),
        "event": torch.tensor([float(it["event"]) for it in items], dtype=torch.float32),
        "bin": torch.tensor([int(it["bin"]) for it in items], dtype=torch.long),
    }


def load_bag_features(paths: Sequence[str], progress: bool = False) -> tuple[list[torch.Tensor], list[dict]]:
    """Read every bag once: ``([N_i, D] float32 tensors, attrs dicts)``; bags must share D.

    Raises:
        DataError: a missing or corrupt bag (from :func:`medattn.data.bags.read_bag`), or bags of
            different feature sizes.
    """
    from tqdm.auto import tqdm

    from medattn.data.bags import read_bag
    from medattn.errors import DataError

    feats, attrs = [], []
    for p in tqdm(paths, desc="loading bags", disable=not progress, leave=False):
        bag = read_bag(p)
        x = torch.from_numpy(np.ascontiguousarray(bag.features, dtype=np.float32))
        if feats and x.shape[1] != feats[0].shape[1]:
            raise DataError(f"features have {x.shape[1]} dimensions, but {paths[0]} has {feats[0].shape[1]}; all "
                            "bags of a run must come from the same encoder", p)
        if x.shape[0] == 0:
            raise DataError("the bag has no patches", p)
        feats.append(x)
        attrs.append(dict(bag.attrs))
    return feats, attrs
