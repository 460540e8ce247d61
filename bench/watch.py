"""Benchmark ``medattn watch`` (1 and 2 workers) against a loop that calls ``medattn infer`` once per case.

What is timed, on CPU with a tiny Attention U-Net trained here on synthetic phantoms (or ``--checkpoint``):

- **burst**: N cases appear in the inbox at once (renamed in); throughput = N / (time until the last
  manifest exists), latency = each case's arrival → its manifest (queueing included).
- **trickle**: cases arrive one at a time, every ``--gap`` seconds (below capacity); latency =
  arrival → manifest of an idle, warm service. Includes the quiet period (``--quiet``).

The baseline is what sites write today: ``for case in inbox: medattn infer CKPT case -o out``, which
starts Python and reloads the model for every case; for the burst its latency is the cumulative time
until that case's turn is over, for the trickle it is one ``medattn infer`` call.
The watcher is started and warm (model loaded) before cases arrive, as a deployed service is.

Every process gets the same number of torch threads (``--threads``, default 1): on a small shared
machine, two threads per process under load made the single-process runners several times slower
(OpenMP barriers spinning on busy cores), which would flatter the two-worker run.

Usage: python bench/watch.py [--cases 24] [--trickle 4] [--shape 48 48 24] [--quiet 0.5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medattn.io import Geometry, write_image

GEOMETRY = Geometry.from_arrays((1.5, 1.5, 3.0), (0.0, 0.0, 0.0), np.eye(3))
ENV = dict(os.environ)


def tiny_checkpoint(root: Path) -> Path:
    from medattn.config import load_config
    from medattn.data.synth import write_synthetic_dataset
    from medattn.engine.trainer import train

    ds = write_synthetic_dataset(root / "synth", spatial_dims=3, n_train=4, n_test=1, seed=1)
    cfg = load_config(None, [
        f"data.dataset={ds}", f"output_dir={root / 'run'}", "data.num_workers=0", "data.val_fraction=0.25",
        "model.kwargs.channels=[4, 8]", "train.patch_size=[16, 16, 8]", "train.epochs=1",
        "train.samples_per_volume=1", "train.batch_size=2", "infer.sw_batch_size=4",
        "preprocess.target_spacing=[1.6, 1.6, 4.0]"])
    return train(cfg, progress=False).best_checkpoint


def make_cases(folder: Path, n: int, shape: tuple[int, ...], prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(ord(prefix))  # distinct contents: no case is a duplicate of another
    return [write_image(rng.normal(size=shape).astype(np.float32), folder / f"{prefix}{i:03d}.nii.gz", GEOMETRY)
            for i in range(n)]


def wait_manifest(path: Path, timeout: float = 600.0) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path}")
        time.sleep(0.01)
    return time.monotonic()


def run_watch(ckpt: Path, work: Path, workers: int, burst: list[Path], trickle: list[Path], quiet: float,
              gap: float) -> dict:
    inbox, outbox = work / "in", work / "out"
    inbox.mkdir(parents=True)
    log = work / "watch.log"
    cmd = [sys.executable, "-m", "medattn", "watch", str(inbox), "-o", str(outbox), "--checkpoint", str(ckpt),
           "--workers", str(workers), "--quiet", str(quiet), "--poll", "0.2", "--device", "cpu"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV)
    try:
        while log.read_text().count("watching") < workers:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text())
            time.sleep(0.05)
        t0 = time.monotonic()
        for f in burst:
            os.replace(f, inbox / f.name)
        done = [wait_manifest(outbox / f"{f.name[:-7]}.json") for f in burst]
        burst_lat = [t - t0 for t in done]
        trickle_lat = []
        for f in trickle:
            time.sleep(gap)
            t = time.monotonic()
            os.replace(f, inbox / f.name)
            trickle_lat.append(wait_manifest(outbox / f"{f.name[:-7]}.json") - t)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    return summary(burst_lat, trickle_lat)


def run_infer_loop(ckpt: Path, work: Path, burst: list[Path], trickle: list[Path]) -> dict:
    out = work / "out"
    t0 = time.monotonic()
    burst_lat = []
    for f in burst:
        subprocess.run([sys.executable, "-m", "medattn", "infer", str(ckpt), str(f), "-o", str(out), "--device",
                        "cpu", "--no-progress"], check=True, capture_output=True, env=ENV)
        burst_lat.append(time.monotonic() - t0)
    trickle_lat = []
    for f in trickle:
        t = time.monotonic()
        subprocess.run([sys.executable, "-m", "medattn", "infer", str(ckpt), str(f), "-o", str(out), "--device",
                        "cpu", "--no-progress"], check=True, capture_output=True, env=ENV)
        trickle_lat.append(time.monotonic() - t)
    return summary(burst_lat, trickle_lat)


def summary(burst: list[float], trickle: list[float]) -> dict:
    return {"cases_per_min": 60.0 * len(burst) / max(burst), "burst_mean": statistics.mean(burst),
            "burst_p95": float(np.percentile(burst, 95)), "trickle_mean": statistics.mean(trickle) if trickle else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: train a tiny model here")
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--trickle", type=int, default=4)
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between trickle arrivals")
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 48, 24])
    ap.add_argument("--quiet", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process, the same for every runner (2 watch workers: 1 each at most)")
    a = ap.parse_args()
    ENV["OMP_NUM_THREADS"] = str(a.threads)
    root = Path(tempfile.mkdtemp(prefix="medattn-bench-watch-"))
    try:
        ckpt = a.checkpoint or tiny_checkpoint(root)
        results = {}
        for name in ("infer loop", "watch, 1 worker", "watch, 2 workers"):
            work = root / name.replace(" ", "_").replace(",", "")
            burst = make_cases(work / "cases", a.cases, tuple(a.shape), "b")
            trickle = make_cases(work / "cases", a.trickle, tuple(a.shape), "t")
            if name == "infer loop":
                results[name] = run_infer_loop(ckpt, work, burst, trickle)
            else:
                results[name] = run_watch(ckpt, work, 1 if "1" in name else 2, burst, trickle, a.quiet, a.gap)
            print(name, {k: round(v, 3) for k, v in results[name].items()}, flush=True)
        base = results["infer loop"]["cases_per_min"]
        print(f"\n{a.threads} thread(s) per process; {a.cases} cases of {'x'.join(map(str, a.shape))} voxels "
              f"at once, then {a.trickle} arriving "
              f"every {a.gap} s; quiet period {a.quiet} s\n")
        print("| runner | cases/min (burst) | speed-up | burst latency mean / p95 (s) | idle latency mean (s) |")
        print("|---|---:|---:|---:|---:|")
        for name, r in results.items():
            print(f"| {name} | {r['cases_per_min']:.1f} | {r['cases_per_min'] / base:.1f}× | "
                  f"{r['burst_mean']:.2f} / {r['burst_p95']:.2f} | {r['trickle_mean']:.2f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
