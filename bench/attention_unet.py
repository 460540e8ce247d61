"""Benchmark: medattn AttentionUNet vs MONAI AttentionUnet on CPU, at equal channel widths and depth.

Measures, in one run:

* a training step: forward + backward + AdamW step with Dice + CE loss (train mode);
* inference throughput: forward in eval mode under ``torch.no_grad()``, in voxels per second.

Both networks get the same channel widths (``--channels``), depth and stride-2 downsampling, the
same inputs and the same loss. Each measurement is warmed up, then repeated ``--repeats`` times
with the two models interleaved (so slow drifts of the machine hit both alike); the median is
reported. Ratio = MONAI time / medattn time (> 1 means medattn is faster).

    python bench/attention_unet.py                 # 3-D, batch 2, 64^3 train, 96^3 inference
    python bench/attention_unet.py --quick         # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medattn.engine.losses import DiceCELoss
from medattn.models import create_model
from medattn.workflow.report import cpu_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spatial-dims", type=int, choices=(2, 3), default=3)
    p.add_argument("--batch", type=int, default=2, help="training batch size (default 2)")
    p.add_argument("--train-size", type=int, default=64, help="training patch edge length (default 64)")
    p.add_argument("--infer-batch", type=int, default=1, help="inference batch size (default 1)")
    p.add_argument("--infer-size", type=int, default=96, help="inference input edge length (default 96)")
    p.add_argument("--channels", default="16,32,64,128,256", help="comma-separated widths, finest first")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--norm", default="instance", choices=("instance", "batch", "group"),
                   help="medattn's norm (MONAI's AttentionUnet is fixed to batch norm); default instance")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per measurement (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (default 10)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke test: 24^3 train, 32^3 inference, widths 8..64, 1 warm-up, 3 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.train_size, args.infer_size, args.channels, args.warmup, args.repeats = 24, 32, "8,16,32,64", 1, 3
    args.channels = tuple(int(c) for c in args.channels.split(","))
    return args


def build_models(args: argparse.Namespace) -> dict[str, nn.Module]:
    """The two networks at equal widths/depth: medattn (registry) and MONAI's AttentionUnet."""
    from monai.networks.nets import AttentionUnet

    ours = create_model("attention_unet", spatial_dims=args.spatial_dims, in_channels=args.in_channels,
                        out_channels=args.classes, channels=list(args.channels), norm=args.norm)
    monai = AttentionUnet(spatial_dims=args.spatial_dims, in_channels=args.in_channels,
                          out_channels=args.classes, channels=args.channels,
                          strides=(2,) * (len(args.channels) - 1))
    return {"medattn AttentionUNet": ours, "MONAI AttentionUnet": monai}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  loss_fn: nn.Module) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


def infer_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    return run


def time_interleaved(fns: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Wall times (s) of ``repeats`` runs of each fn after ``warmup`` runs; the fns take turns."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def report_times(what: str, times: dict[str, list[float]]) -> dict[str, float]:
    """Print every run's time and return the medians."""
    for name, ts in times.items():
        print(f"  {what} {name}: " + " ".join(f"{t:.3f}" for t in ts) + f" s (median {statistics.median(ts):.3f})")
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import monai

    d = args.spatial_dims
    print("command: python bench/attention_unet.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores), threads={torch.get_num_threads()}")
    print(f"torch {torch.__version__}, monai {monai.__version__}, python {platform.python_version()}")
    print(f"channels={list(args.channels)} depth={len(args.channels)} spatial_dims={d} "
          f"medattn norm={args.norm} (MONAI: batch)")
    models = build_models(args)
    for name, m in models.items():
        print(f"parameters {name}: {n_params(m):,}")

    shape = (args.batch, args.in_channels, *(args.train_size,) * d)
    x = torch.randn(shape)
    y = torch.randint(0, args.classes, (args.batch, 1, *(args.train_size,) * d))
    loss_fn = DiceCELoss(args.classes)
    print(f"training step: input {tuple(shape)}, AdamW, Dice+CE; warmup {args.warmup}, "
          f"median of {args.repeats}")
    train = report_times("train step", time_interleaved(
        {k: train_step_fn(m, x, y, loss_fn) for k, m in models.items()}, args.warmup, args.repeats))

    ishape = (args.infer_batch, args.in_channels, *(args.infer_size,) * d)
    xi = torch.randn(ishape)
    print(f"inference: input {tuple(ishape)}, eval mode, no_grad; warmup {args.warmup}, "
          f"median of {args.repeats}")
    infer = report_times("inference", time_interleaved(
        {k: infer_fn(m, xi) for k, m in models.items()}, args.warmup, args.repeats))
    voxels = args.infer_batch * args.infer_size**d

    ours, theirs = list(models)
    print()
    print("| model | parameters | train step (s) | inference (s) | inference (Mvoxel/s) |")
    print("|---|---:|---:|---:|---:|")
    for name, m in models.items():
        print(f"| {name} | {n_params(m):,} | {train[name]:.3f} | {infer[name]:.3f} | "
              f"{voxels / infer[name] / 1e6:.3f} |")
    print(f"| ratio MONAI / medattn (> 1: medattn faster) | | {train[theirs] / train[ours]:.2f} | "
          f"{infer[theirs] / infer[ours]:.2f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
