"""Benchmark whole-slide feature extraction: tissue detection + patching + handcrafted features.

A synthetic slide (default 16384 × 12288 px at 20×, 0.5 µm/px, a JPEG pyramidal TIFF written by
``medattn.data.wsi_synth``) goes through the same steps as ``medattn features``, each timed:

1. open + thumbnail (2048 px) + tissue detection, mask PNG/GeoJSON and thumbnail PNG saved;
2. the patch grid (256 px patches at 20×, tissue fraction >= 0.5);
3. reading + encoding every patch: DataLoader workers (``--workers``, each opens the slide itself)
   feed batches (``--batch``) to the vectorised handcrafted encoder;
4. writing the HDF5 bag.

The baseline, in the same run and on the same patch coordinates, is the CLAM-style loop: for every
patch, ``openslide.OpenSlide.read_region`` → RGB array → the same encoder on that one patch, in one
process; then the bag is written. Both compute the same features (the largest difference is printed),
so the ratio measures batching and parallel reading, not different work. Stages 1–2 are shared (the
baseline needs a tissue mask and a grid too), so the end-to-end ratio adds their time to both.

Usage: python bench/wsi_features.py [--size 16384 12288] [--workers 2] [--batch 64] [--threads 1]
       [--baseline-patches N] [--slide PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide
import torch

from medattn.config import load_mil_config
from medattn.data.bags import write_bag
from medattn.data.features import encode_grid
from medattn.data.handcrafted import HandcraftedEncoder
from medattn.data.patching import patch_grid
from medattn.data.tissue import TissueMask, detect_tissue, save_mask
from medattn.data.wsi_synth import write_synthetic_slides
from medattn.io.slide import open_slide


def _baseline(path: Path, coords: np.ndarray, level: int, size: int, encoder: HandcraftedEncoder) -> np.ndarray:
    """CLAM-style: one read_region and one encoder call per patch, in this process."""
    osr = openslide.OpenSlide(str(path))
    rows = []
    with torch.inference_mode():
        for x, y in coords:
            patch = np.asarray(osr.read_region((int(x), int(y)), level, (size, size)).convert("RGB"))
            t = torch.from_numpy(patch).permute(2, 0, 1)[None].float() / 255.0
            rows.append(encoder(t)[0].numpy())
    osr.close()
    return np.stack(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, nargs=2, default=(16384, 12288), metavar=("W", "H"))
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers reading patches (medattn)")
    p.add_argument("--batch", type=int, default=64, help="patches per encoder call (medattn)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the main process (both runs)")
    p.add_argument("--baseline-patches", type=int, default=0, help="time the baseline on this many patches "
                   "(evenly spaced; 0: all)")
    p.add_argument("--slide", default=None, help="use this slide instead of generating one")
    p.add_argument("--keep", default=None, help="work folder to keep (the generated slide is reused from it)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="medattn_wsi_bench_"))
    try:
        if a.slide:
            path = Path(a.slide)
        else:
            path = work / "synth" / "slides" / "slide_000.tif"
            if not path.is_file():
                t = time.perf_counter()
                write_synthetic_slides(work / "synth", n_slides=1, size=tuple(a.size), seed=0)
                print(f"generated {path} in {time.perf_counter() - t:.1f} s")
        cfg = load_mil_config(None, [f"encoder.num_workers={a.workers}", f"encoder.batch_size={a.batch}"])
        out = work / "out"
        times: dict[str, float] = {}

        t = time.perf_counter()
        slide = open_slide(path)
        thumb, ds = slide.get_thumbnail(cfg.tissue.thumbnail_size)
        tissue = TissueMask(detect_tissue(thumb, ds, slide.mpp, cfg.tissue), ds, "detected")
        save_mask(tissue, out / "masks" / "s.png", out / "masks" / "s.geojson")
        times["thumbnail + tissue detection + mask files"] = time.perf_counter() - t
        t = time.perf_counter()
        grid = patch_grid(slide, tissue, cfg.patch)
        times["patch grid"] = time.perf_counter() - t
        n = len(grid)
        encoder = HandcraftedEncoder().eval()
        t = time.perf_counter()
        feats = encode_grid(slide, grid, encoder, a.batch, a.workers, torch.device("cpu"),
                            {"backend": slide.backend}, progress=False)
        times["read + encode (medattn)"] = time.perf_counter() - t
        t = time.perf_counter()
        write_bag(out / "s.h5", feats, grid.coords, {"encoder": encoder.name})
        times["write bag"] = time.perf_counter() - t
        shared = times["thumbnail + tissue detection + mask files"] + times["patch grid"]
        medattn_total = sum(times.values())

        idx = np.arange(n) if not a.baseline_patches else np.linspace(0, n - 1, min(n, a.baseline_patches)).astype(int)
        t = time.perf_counter()
        base = _baseline(path, grid.coords[idx], grid.level, grid.read_size, encoder)
        base_time = time.perf_counter() - t
        t = time.perf_counter()
        write_bag(out / "b.h5", base, grid.coords[idx], {"encoder": encoder.name})
        base_write = time.perf_counter() - t
        diff = float(np.abs(base - feats[idx]).max())
        base_rate = len(idx) / base_time
        base_total = shared + n / base_rate + base_write * n / len(idx)

        print(f"slide {path.name}: {slide.dimensions[0]} x {slide.dimensions[1]} px, {slide.level_count} levels, "
              f"mpp {slide.mpp:g}, {n} tissue patches of {grid.patch_size} px at {grid.magnification:g}x")
        print(f"workers {a.workers}, batch {a.batch}, torch threads {a.threads}; baseline timed on {len(idx)} "
              f"patches; max |feature difference| {diff:.2e}\n")
        print("| stage | medattn (s) | patches/s |\n|---|---:|---:|")
        for name, sec in times.items():
            print(f"| {name} | {sec:.2f} | {n / sec:.0f} |")
        print(f"| **total** | **{medattn_total:.2f}** | **{n / medattn_total:.1f}** |\n")
        read_rate = n / times["read + encode (medattn)"]
        print("| | medattn | CLAM-style loop | ratio (medattn / loop) |\n|---|---:|---:|---:|")
        print(f"| read + encode, patches/s | {read_rate:.1f} | {base_rate:.1f} | {read_rate / base_rate:.2f} |")
        print(f"| end to end (tissue + grid + features + bag), patches/s | {n / medattn_total:.1f} | "
              f"{n / base_total:.1f} | {base_total / medattn_total:.2f} |")
        slide.close()
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
