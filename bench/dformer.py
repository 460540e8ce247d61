"""Benchmark: medattn's D-Former against the Attention U-Net and MONAI's SwinUNETR, same input size.

Reports, in one run and for every model: parameters, forward FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, 2 FLOPs per multiply-add),
the median time of a training step (forward + backward + AdamW step, Dice + CE loss, train mode) and
of inference (eval mode, ``torch.no_grad()``). The models take turns inside every repeat so that
load changes on the machine hit them alike. Runs on CPU, and on CUDA when one is available.

    python bench/dformer.py                      # D-Former base, 1×1×64³, CPU threads = all cores
    python bench/dformer.py --preset tiny --size 32 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medattn.engine.losses import DiceCELoss
from medattn.models import create_model
from medattn.workflow.report import cpu_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="base", choices=("tiny", "base"), help="D-Former preset (default base)")
    p.add_argument("--size", type=int, default=64, help="input edge length, a multiple of 32 (default 64)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--swin-feature-size", type=int, default=48, help="SwinUNETR feature_size (default 48)")
    p.add_argument("--unet-channels", default="16,32,64,128,256")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p.parse_args(argv)


def build_models(a: argparse.Namespace) -> dict[str, nn.Module]:
    from monai.networks.nets import SwinUNETR

    channels = tuple(int(c) for c in a.unet_channels.split(","))
    return {
        f"medattn dformer ({a.preset})": create_model("dformer", preset=a.preset, in_channels=1,
                                                      out_channels=a.classes),
        "medattn attention_unet": create_model("attention_unet", in_channels=1, out_channels=a.classes,
                                               channels=channels),
        f"MONAI SwinUNETR (feature_size {a.swin_feature_size})": SwinUNETR(
            in_channels=1, out_channels=a.classes, feature_size=a.swin_feature_size, spatial_dims=3),
    }


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = {k: m.to(device) for k, m in build_models(a).items()}
    x = torch.randn(a.batch, 1, a.size, a.size, a.size, device=device)
    y = torch.randint(0, a.classes, (a.batch, 1, a.size, a.size, a.size), device=device)
    loss_fn = DiceCELoss(a.classes)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    flops = {k: forward_flops(m, x) for k, m in models.items()}

    def train_step(name: str) -> None:
        m = models[name].train()
        opts[name].zero_grad(set_to_none=True)
        out = m(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        loss_fn(out, y).backward()
        opts[name].step()

    def infer(name: str) -> None:
        m = models[name].eval()
        with torch.no_grad():
            m(x)

    times: dict[str, dict[str, list[float]]] = {k: {"train": [], "infer": []} for k in models}
    for rep in range(a.warmup + a.repeats):
        for name in models:
            t_train, t_infer = timed(lambda n=name: train_step(n), device), timed(lambda n=name: infer(n), device)
            if rep >= a.warmup:
                times[name]["train"].append(t_train)
                times[name]["infer"].append(t_infer)

    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"{cpu_name()}, {a.threads} threads"
    print(f"device: {dev}; torch {torch.__version__}; input {a.batch}×1×{a.size}³; median of {a.repeats} "
          f"after {a.warmup} warm-up")
    print("| model | parameters | forward GFLOP | train step (s) | inference (s) |")
    print("|---|---:|---:|---:|---:|")
    for name in models:
        tr, inf = statistics.median(times[name]["train"]), statistics.median(times[name]["infer"])
        print(f"| {name} | {params[name]:,} | {flops[name] / 1e9:.1f} | {tr:.3f} | {inf:.3f} |")


if __name__ == "__main__":
    main()
