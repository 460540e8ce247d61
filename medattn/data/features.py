"""Feature extraction: slides → tissue masks, patch grids and HDF5 feature bags.

Per slide (:func:`slide_bag`): detect the tissue on a thumbnail (or take the user's mask), save the
mask (``masks/<slide_id>.png`` + ``.geojson``, editable in QuPath) and the thumbnail
(``thumbnails/<slide_id>.png``), tile the tissue into patches at the target magnification, read the
patches in DataLoader workers (each worker opens the slide itself), encode them in batches and write
``<slide_id>.h5`` (:mod:`medattn.data.bags`).

Resuming (:func:`extract_features`): a bag is written under a temporary name and renamed when complete,
so an interrupted slide leaves no bag (its stale temporary file is removed) and is redone; a finished
bag is skipped unless ``overwrite``, and is redone when it was made by another encoder (name or
version, which includes the weights' hash) or with other slide/tissue/patch settings. A slide that
fails (unreadable, truncated, no tissue) is reported with a one-line message and the others still finish.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from tqdm import tqdm

from medattn.config.mil_schema import MilConfig
from medattn.data.bags import write_bag
from medattn.data.encoders import PatchEncoder, create_encoder
from medattn.data.patching import PatchGrid, patch_grid, read_patch
from medattn.data.tissue import TissueMask, detect_tissue, save_mask, tissue_mask_for
from medattn.devices import resolve_device
from medattn.errors import DataError, MedattnError
from medattn.io.atomic import atomic_path
from medattn.io.slide import Slide, find_slides, open_slide, slide_suffix


@dataclass
class ExtractResult:
    """What :func:`extract_features` did: bags written, bags skipped (already done), failures
    ``(slide path, one-line message)``."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def one_line(exc: BaseException) -> str:
    """A one-line message for ``exc`` without the file name a MedattnError already starts with."""
    if isinstance(exc, MedattnError):
        text = str(exc).removeprefix(f"{exc.path}: ") if exc.path else str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def slide_id_of(path: str | Path) -> str:
    """The slide id of a slide file without opening it (the name without its slide suffix)."""
    name = Path(path).name
    suffix = slide_suffix(path)
    return name[: len(name) - len(suffix)] if suffix else Path(path).stem


def extraction_settings(cfg: MilConfig) -> str:
    """The settings a bag depends on besides the encoder (slide, tissue, patch sections), as JSON."""
    return json.dumps({"slide": asdict(cfg.slide), "tissue": asdict(cfg.tissue), "patch": asdict(cfg.patch)},
                      sort_keys=True)


def bag_is_current(path: str | Path, cfg: MilConfig, encoder: PatchEncoder) -> bool:
    """Whether ``path`` is a complete bag made by ``encoder`` with ``cfg``'s extraction settings."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            complete = "features" in f and "coords" in f
    except (OSError, ValueError):
        return False
    return (complete and attrs.get("encoder") == encoder.name and attrs.get("encoder_version") == encoder.version
            and attrs.get("extraction") == extraction_settings(cfg))


class PatchDataset(Dataset):
    """Batches of one slide's patches, read lazily; every worker process opens the slide itself.

    Item = a list of patch indices → ``(batch, error)``: ``batch`` is ``[b, 3, patch_size, patch_size]``
    uint8, or ``[b, dim]`` float32 features when an ``encoder`` is given (encoding in the workers);
    ``error`` is "" or a one-line message (the batch is then empty), so that the main process can
    report a read failure in one line naming the slide.
    """

    def __init__(self, slide_path: Path, slide_kwargs: dict[str, Any], grid: PatchGrid,
                 encoder: PatchEncoder | None = None) -> None:
        self.slide_path, self.slide_kwargs, self.grid, self.encoder = slide_path, slide_kwargs, grid, encoder
        self._slide: Slide | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.grid)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, str]:
        try:
            if self._slide is None or self._pid != os.getpid():
                self._slide, self._pid = open_slide(self.slide_path, **self.slide_kwargs), os.getpid()
            patches = np.stack([read_patch(self._slide, self.grid, i) for i in indices])
            batch = torch.from_numpy(patches).permute(0, 3, 1, 2)
            if self.encoder is not None:
                with torch.inference_mode():
                    batch = self.encoder(batch.float().div_(255.0)).float()
            return batch, ""
        except Exception as exc:  # reported by the main process, naming the slide
            return torch.zeros(0), one_line(exc)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers share the cores; one thread each avoids oversubscription


def encode_grid(slide: Slide, grid: PatchGrid, encoder: PatchEncoder, batch_size: int, num_workers: int,
                device: torch.device, slide_kwargs: dict[str, Any], progress: bool = True) -> np.ndarray:
    """Features ``[N, encoder.dim]`` float32 of every patch of ``grid``, in order.

    Batches of ``batch_size`` patches are read by ``num_workers`` DataLoader workers (0: in this
    process). A small CPU encoder (``encoder.encode_in_workers``, e.g. handcrafted) on a CPU device
    runs inside the workers, so reading and encoding use every worker's core; otherwise the workers
    read and this process encodes (on ``device``).
    """
    in_workers = num_workers > 0 and device.type == "cpu" and encoder.encode_in_workers
    dataset = PatchDataset(slide.path, slide_kwargs, grid, encoder if in_workers else None)
    sampler = BatchSampler(SequentialSampler(range(len(grid))), batch_size, drop_last=False)
    loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=num_workers,
                        worker_init_fn=_one_thread if num_workers else None, pin_memory=device.type == "cuda")
    features = np.empty((len(grid), encoder.dim), np.float32)
    pos = 0
    with torch.inference_mode(), tqdm(total=len(grid), desc=slide.slide_id, unit="patch", disable=not progress,
                                      leave=False) as bar:
        for batch, error in loader:
            if error:
                raise DataError(f"cannot read patches: {error}", slide.path)
            out = batch if in_workers else encoder(batch.to(device, non_blocking=True).float().div_(255.0))
            features[pos: pos + len(out)] = out.float().cpu().numpy()
            pos += len(out)
            bar.update(len(out))
    return features


def _save_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=1)  # fast; thumbnails are big


def slide_bag(slide_path: str | Path, cfg: MilConfig, out_dir: str | Path, encoder: PatchEncoder | None = None,
              progress: bool = True) -> Path:
    """Extract one slide's bag: ``<out_dir>/<slide_id>.h5``, ``masks/<slide_id>.png`` + ``.geojson``,
    ``thumbnails/<slide_id>.png``. Returns the bag path.

    Raises:
        DataError: the slide cannot be read, has no mpp/magnification, or no tissue patches.
        ConfigError: the encoder cannot be created (when ``encoder`` is None).
    """
    out_dir = Path(out_dir)
    encoder = encoder if encoder is not None else create_encoder(cfg.encoder)
    device = resolve_device(cfg.encoder.device)
    encoder = encoder.to(device).eval()
    kwargs = {"mpp": cfg.slide.mpp, "magnification": cfg.slide.magnification, "backend": cfg.slide.backend}
    with open_slide(slide_path, **kwargs) as slide:
        sid = slide.slide_id
        thumb, ds = slide.get_thumbnail(cfg.tissue.thumbnail_size)
        if cfg.tissue.mask:
            tissue = tissue_mask_for(slide, cfg.tissue)
        else:  # the same thumbnail serves detection and the saved picture
            tissue = TissueMask(detect_tissue(thumb, ds, slide.mpp, cfg.tissue), ds, "detected")
        save_mask(tissue, out_dir / "masks" / f"{sid}.png", out_dir / "masks" / f"{sid}.geojson")
        _save_png(out_dir / "thumbnails" / f"{sid}.png", thumb)
        grid = patch_grid(slide, tissue, cfg.patch)
        if len(grid) == 0:
            raise DataError(f"no tissue patches (tissue found: {tissue.mask.mean():.1%} of the thumbnail, "
                            f"patch.min_tissue {cfg.patch.min_tissue:g}); see masks/{sid}.png", slide.path)
        features = encode_grid(slide, grid, encoder, cfg.encoder.batch_size, cfg.encoder.num_workers, device,
                               {**kwargs, "backend": slide.backend}, progress)
        w0, h0 = slide.dimensions
        attrs = {
            "patch_size": grid.patch_size, "level": grid.level, "magnification": grid.magnification,
            "mpp": grid.mpp, "encoder": encoder.name, "encoder_version": encoder.version, "slide_id": sid,
            "patch_size_level0": grid.patch_size_level0, "read_size": grid.read_size,
            "overlap": cfg.patch.overlap, "min_tissue": cfg.patch.min_tissue, "tissue_source": tissue.source,
            "level0_magnification": slide.magnification, "level0_mpp": slide.mpp,
            "level0_width": w0, "level0_height": h0, "slide_file": slide.path.name,
            # the names CLAM and TRIDENT readers look for
            "patch_level": grid.level, "target_magnification": grid.magnification, "name": sid,
            "extraction": extraction_settings(cfg),
        }
    return write_bag(out_dir / f"{sid}.h5", features, grid.coords, attrs)


def extract_features(slides: Any, out_dir: str | Path, cfg: MilConfig, overwrite: bool = False,
                     progress: bool = True) -> ExtractResult:
    """Bags for every slide among ``slides`` (files or folders) into ``out_dir``, resumably.

    Raises:
        DataError: an input path does not exist or is not a slide file (before any work).
        ConfigError: the encoder cannot be created.
    """
    inputs = [slides] if isinstance(slides, (str, Path)) else list(slides)
    paths = find_slides(inputs)
    out_dir = Path(out_dir)
    encoder = create_encoder(cfg.encoder).to(resolve_device(cfg.encoder.device))
    result = ExtractResult()
    seen: dict[str, Path] = {}
    for path in tqdm(paths, desc="slides", unit="slide", disable=not progress or len(paths) < 2):
        sid = slide_id_of(path)
        if sid in seen:
            result.failed.append((str(path), f"slide id {sid!r} is also the id of {seen[sid]}; rename one"))
            continue
        seen[sid] = path
        bag = out_dir / f"{sid}.h5"
        if not overwrite and bag.is_file() and bag_is_current(bag, cfg, encoder):
            result.skipped.append(bag)
            continue
        # an interrupted run leaves the temporary file of a bag that never got renamed into place
        for stale in out_dir.glob(f".{glob.escape(sid)}.*.tmp.h5"):
            stale.unlink(missing_ok=True)
        try:
            result.done.append(slide_bag(path, cfg, out_dir, encoder, progress))
        except Exception as exc:  # one slide's failure must not stop the others
            result.failed.append((str(path), one_line(exc)))
    return result
