"""Cached MONAI datasets and DataLoaders for training and validation.

Deterministic preprocessing is cached (in memory with CacheDataset, or on disk with
PersistentDataset); random augmentation runs after the cache, in DataLoader workers. Each epoch's
randomness is a function of (seed, epoch) alone, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from monai import data as md
from monai import transforms as mt

from medattn.config import Config
from medattn.data.dataset import Case
from medattn.data.transforms import augmentation, canonical_spacing, preprocessing, resolve_orientation
from medattn.errors import DataError
from medattn.io import read_geometry


def median_spacing(cases: Sequence[Case], orientation: str | None) -> list[float]:
    """Median voxel spacing of ``cases`` in the canonical frame (nnU-Net's default target spacing)."""
    spacings = [canonical_spacing(read_geometry(c.images[0]), orientation) for c in cases]
    return [float(v) for v in np.median(np.asarray(spacings), axis=0)]


def preprocess_transforms(cfg: Config, spatial_dims: int, target_spacing: Sequence[float] | None,
                          labels: dict[int, str] | None, with_label: bool = True) -> list[mt.Transform]:
    """The deterministic part of the pipeline, from the config's ``preprocess`` section."""
    p = cfg.preprocess
    return preprocessing(resolve_orientation(p.orientation, spatial_dims), target_spacing, p.normalization,
                         p.zscore_nonzero, p.ct_window, labels=labels, with_label=with_label)


class SafeCacheDataset(md.CacheDataset):
    """MONAI's CacheDataset, whose cache filling stops cleanly at the first bad case.

    MONAI fills the cache with a ``multiprocessing.pool.ThreadPool`` that is terminated, not joined,
    when a transform raises; a thread still inside a native reader (ITK) then outlives the
    interpreter and aborts the process at exit. Here pending cases are cancelled and running ones
    finish before the error propagates.
    """

    def _fill_cache(self, indices=None) -> list:
        if self.cache_num <= 0:
            return []
        indices = list(range(self.cache_num)) if indices is None else indices
        with ThreadPoolExecutor(max_workers=max(1, self.num_workers or 1)) as pool:
            futures = [pool.submit(self._load_cache_item, i) for i in indices]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def _dataset(items: list[dict], transform: mt.Compose, cfg: Config, cache_dir: Path, workers: int) -> md.Dataset:
    if cfg.data.cache == "memory":
        return SafeCacheDataset(items, transform=transform, cache_rate=1.0, num_workers=max(1, workers),
                                progress=False, copy_cache=False)
    if cfg.data.cache == "disk":
        return md.PersistentDataset(items, transform=transform, cache_dir=cache_dir)
    return md.Dataset(items, transform=transform)


def build_datasets(cfg: Config, train_cases: Sequence[Case], val_cases: Sequence[Case], spatial_dims: int,
                   target_spacing: Sequence[float] | None, labels: dict[int, str], run_dir: Path
                   ) -> tuple[md.Dataset, md.Dataset | None]:
    """Training dataset (preprocess → cache → augment) and validation dataset (preprocess → cache)."""
    if len(cfg.train.patch_size) != spatial_dims:
        raise DataError(f"train.patch_size {cfg.train.patch_size} has {len(cfg.train.patch_size)} axes, "
                        f"the images have {spatial_dims}")
    pre = preprocess_transforms(cfg, spatial_dims, target_spacing, labels)
    a = cfg.augment
    aug = augmentation(spatial_dims, cfg.train.patch_size, cfg.train.samples_per_volume, cfg.train.pos_fraction,
                       a.flip, a.rotate90, a.rotate_deg, a.scale, a.intensity, a.prob)
    cache_dir = Path(cfg.data.cache_dir or run_dir / "cache")
    workers = cfg.data.num_workers
    train_ds = _dataset([c.as_dict() for c in train_cases], mt.Compose([*pre, *aug]), cfg,
                        cache_dir / "train", workers)
    val_ds = None
    if val_cases:
        val_ds = _dataset([c.as_dict() for c in val_cases], mt.Compose(pre), cfg, cache_dir / "val", workers)
    return train_ds, val_ds


def train_loader(ds: md.Dataset, cfg: Config, epoch: int) -> md.DataLoader:
    """A loader whose shuffling and augmentation depend only on (seed, epoch)."""
    seed = cfg.seed * 100_003 + epoch
    if isinstance(ds, md.Dataset) and isinstance(ds.transform, mt.Randomizable | mt.Compose):
        ds.transform.set_random_state(seed=seed % (2**32))
    generator = torch.Generator().manual_seed(seed)
    # MONAI's DataLoader seeds each worker's random transforms from this generator (worker_init_fn).
    return md.DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                         generator=generator, drop_last=False, pin_memory=torch.cuda.is_available(),
                         persistent_workers=False)
