"""Cached MONAI datasets and DataLoaders for training and validation.

Deterministic preprocessing is cached (in memory with CacheDataset, or on disk with
PersistentDataset); random augmentation runs after the cache, in DataLoader workers.

Randomness is a function of (seed, epoch) alone, so a resumed run repeats an uninterrupted one:
the epoch's permutation of the training cases comes from (seed, epoch), and each drawn sample's
crops and augmentations from (seed, epoch, case index). A sample is therefore the same whichever
process or DataLoader worker draws it, and with several processes (DDP) each rank takes a
disjoint shard of the one permutation (``DistributedSampler``): 2 processes with batch ``b`` see
exactly the samples of 1 process with batch ``2 b``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from monai import data as md
from monai import transforms as mt
from torch.utils.data.distributed import DistributedSampler

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


class SeededSamples(torch.utils.data.Dataset):
    """``ds[i]`` with its random transforms reseeded from ``(seed, i)`` first.

    The augmentation of a sample then depends on neither the order in which samples are drawn nor
    on which process or worker draws them.
    """

    def __init__(self, ds: md.Dataset, seed: int) -> None:
        self.ds, self.seed = ds, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        transform = getattr(self.ds, "transform", None)
        if isinstance(transform, mt.Randomizable | mt.Compose):
            state = np.random.SeedSequence([self.seed % (2**32), int(index)]).generate_state(1)[0]
            transform.set_random_state(seed=int(state))
        return self.ds[index]


def train_loader(ds: md.Dataset, cfg: Config, epoch: int, rank: int = 0, world_size: int = 1) -> md.DataLoader:
    """This rank's loader for ``epoch``: shuffling and augmentation depend only on (seed, epoch).

    The ``DistributedSampler`` shuffles all cases with a generator seeded from (seed, epoch), pads
    the permutation to a multiple of ``world_size`` by repeating its start (so that every rank runs
    the same number of steps) and gives rank ``r`` the positions ``r, r + world_size, ...``.
    ``cfg.train.batch_size`` cases are loaded per rank and step.
    """
    seed = cfg.seed * 100_003 + epoch
    samples = SeededSamples(ds, seed)
    sampler: DistributedSampler = DistributedSampler(samples, num_replicas=world_size, rank=rank, shuffle=True,
                                                     seed=cfg.seed * 100_003, drop_last=False)
    sampler.set_epoch(epoch)  # permutation from a generator seeded with seed + epoch
    generator = torch.Generator().manual_seed(seed)  # MONAI's worker_init_fn seeds workers from it
    return md.DataLoader(samples, batch_size=cfg.train.batch_size, sampler=sampler,
                         num_workers=cfg.data.num_workers, generator=generator, drop_last=False,
                         pin_memory=torch.cuda.is_available(), persistent_workers=False)
