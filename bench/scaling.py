"""Data-parallel scaling: the same training (same global batch) on 1 process and on N processes.

    python bench/scaling.py [--procs 2] [--epochs 4] [--threads 1] [--device cpu|cuda]

Both runs train the 3-D Attention U-Net on the same synthetic phantoms with the same global batch
(``batch_size × processes``), without validation, and each process uses ``--threads`` intra-op threads
(``OMP_NUM_THREADS``/``torch.set_num_threads``), so the N-process run uses N times the cores of the
1-process run; on CPU that is the fair comparison for "what does adding a process buy". Epoch times come
from each run's ``log.csv`` (rank 0's wall time per epoch, so start-up and cache filling are left out);
the first epoch is dropped as warm-up. Scaling efficiency = t(1 process) / (N × t(N processes)).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from medattn.config import load_config, save_config
from medattn.data.synth import write_synthetic_dataset
from medattn.engine.trainer import read_log


def run(config: Path, procs: int, threads: int, batch: int, out: Path) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    cmd = [*launcher, "-m", "medattn", "train", str(config), "--no-progress",
           "--set", f"output_dir={out}", "--set", f"train.batch_size={batch}"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return [float(r["time_s"]) for r in read_log(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    ap.add_argument("--global-batch", type=int, default=4)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.global_batch % a.procs:
        ap.error("--global-batch must be a multiple of --procs")
    with tempfile.TemporaryDirectory(prefix="medattn-scaling-") as tmp:
        root = Path(tmp)
        ds = write_synthetic_dataset(root / "data", spatial_dims=3, n_train=a.cases, n_test=0, seed=0)
        cfg = load_config(None, [f"data.dataset={ds}", "data.val_fraction=0", "data.num_workers=0",
                                 "model.kwargs.channels=[8, 16, 32]", "train.patch_size=[48, 48, 24]",
                                 "train.samples_per_volume=1", f"train.epochs={a.epochs}",
                                 "train.scheduler=constant", f"train.device={a.device}",
                                 "preprocess.target_spacing=[1.6, 1.6, 4.0]"])
        save_config(cfg, root / "config.yaml")
        times = {}
        for procs in (1, a.procs):
            epochs = run(root / "config.yaml", procs, a.threads, a.global_batch // procs, root / f"run{procs}")
            times[procs] = statistics.median(epochs[1:])
            print(f"{procs} process(es) × {a.threads} thread(s), batch {a.global_batch // procs} each: "
                  f"epoch {times[procs]:.2f} s (epochs {', '.join(f'{t:.2f}' for t in epochs)})")
        speedup = times[1] / times[a.procs]
        print(f"speed-up {speedup:.2f}×, scaling efficiency {speedup / a.procs:.0%} "
              f"({a.cases} cases per epoch, global batch {a.global_batch})")


if __name__ == "__main__":
    main()
