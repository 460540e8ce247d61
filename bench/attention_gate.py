"""Benchmark: fused Triton attention gate vs the unfused PyTorch gate (time and peak memory).

The gate of the Attention U-Net's finest level at ``--size``³ inputs: skip ``x`` at size³, so the gate
op runs at the gating resolution (size/2)³ on theta, phi (B, F, *(size/2)) with F = C/2 for every skip
width C in ``--channels``. Per F, one run measures, for forward and for forward + backward:

* ``unfused``: ``sigmoid(conv1x1(ReLU(theta + phi)))`` in eager PyTorch (the CPU path of medattn);
* ``unfused-compiled``: the same under ``torch.compile`` (CUDA only; Inductor fuses elementwise ops);
* ``fused``: :func:`medattn.kernels.attention_gate_triton.fused_attention_gate` (CUDA only);

with the median time over ``--repeats`` runs, the peak memory above the inputs (CUDA), and the max
error of alpha and of d theta against the fp32 unfused gate. Without CUDA it runs at a small size
(``--size 32`` unless given) and reports the reference timing, marking the CUDA-only rows skipped.

    python bench/attention_gate.py                   # CUDA: 128^3 inputs, fp16, C = 16, 32, 64
    python bench/attention_gate.py --size 32         # what the CPU run uses by default
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medattn.kernels.attention_gate import reference_attention_gate

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=None, help="skip (input) edge length; default 128 on CUDA, 32 on CPU")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", default="16,32,64", help="skip widths C (gate F = C/2), comma-separated")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default float16 on CUDA, float32 on CPU")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    args.device = torch.device("cuda" if cuda else "cpu")
    args.size = args.size or (128 if cuda else 32)
    args.dtype = DTYPES[args.dtype or ("float16" if cuda else "float32")]
    args.channels = tuple(int(c) for c in args.channels.split(","))
    if args.size % 2:
        p.error("--size must be even (the gate works at size/2)")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> tuple[float, float | None]:
    """Median milliseconds of ``fn()`` and the peak memory (MiB) it allocates above what is live (CUDA)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), peak


def gate_impls(args: argparse.Namespace) -> dict[str, Callable | str]:
    """name → gate function, or the reason it is skipped."""
    impls: dict[str, Callable | str] = {"unfused": reference_attention_gate}
    if args.device.type != "cuda":
        impls["unfused-compiled"] = "skipped: needs CUDA"
        impls["fused"] = "skipped: the Triton kernel needs CUDA (tests run it under TRITON_INTERPRET=1)"
        return impls
    if args.no_compile:
        impls["unfused-compiled"] = "skipped: --no-compile"
    else:
        impls["unfused-compiled"] = torch.compile(reference_attention_gate, dynamic=False)
    from medattn.kernels.attention_gate_triton import fused_attention_gate

    impls["fused"] = fused_attention_gate
    return impls


def time_impl(fn: Callable, theta: torch.Tensor, phi: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
              grad: torch.Tensor, args: argparse.Namespace) -> tuple:
    """Forward and forward + backward (grads of theta, phi) timings and peaks; alpha and d theta."""
    t_ = theta.detach().requires_grad_(True)
    p_ = phi.detach().requires_grad_(True)
    fwd_ms, fwd_mem = measure(lambda: fn(t_.detach(), p_.detach(), w, b), args.device, args.warmup, args.repeats)
    fb_ms, fb_mem = measure(lambda: torch.autograd.grad(fn(t_, p_, w, b), (t_, p_), grad), args.device,
                            args.warmup, args.repeats)
    out = fn(t_, p_, w, b)
    dtheta, _ = torch.autograd.grad(out, (t_, p_), grad)
    return fwd_ms, fwd_mem, fb_ms, fb_mem, out, dtheta


def run_case(args: argparse.Namespace, feats: int, impls: dict[str, Callable | str]) -> list[dict]:
    n = args.size // 2
    gen = torch.Generator(device="cpu").manual_seed(feats)
    shape = (args.batch, feats, n, n, n)
    theta = torch.randn(shape, generator=gen).to(args.device, args.dtype)
    phi = torch.randn(shape, generator=gen).to(args.device, args.dtype)
    w = (torch.randn(1, feats, 1, 1, 1, generator=gen) / feats**0.5).to(args.device)
    b = torch.zeros(1, device=args.device)
    grad = torch.rand(args.batch, 1, n, n, n, generator=gen).to(args.device, args.dtype)

    leaves = [t.detach().float().requires_grad_(True) for t in (theta, phi)]
    ref = reference_attention_gate(*leaves, w, b)
    ref_dtheta, = torch.autograd.grad(ref, leaves[0], grad.float())
    rows = []
    for name, fn in impls.items():
        row = {"F": feats, "impl": name}
        if isinstance(fn, str):
            rows.append({**row, "note": fn})
            continue
        fwd_ms, fwd_mem, fb_ms, fb_mem, out, dtheta = time_impl(fn, theta, phi, w, b, grad, args)
        rows.append({**row, "fwd_ms": fwd_ms, "fwdbwd_ms": fb_ms, "fwd_mib": fwd_mem, "fwdbwd_mib": fb_mem,
                     "err_alpha": (out.float() - ref).abs().max().item(),
                     "err_dtheta": (dtheta.float() - ref_dtheta).abs().max().item()})
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.cuda.get_device_name() if args.device.type == "cuda" else "CPU"
    print(f"# attention gate: inputs {args.batch}x C x {args.size}^3, gate at {args.size // 2}^3, "
          f"{str(args.dtype).removeprefix('torch.')}, {dev}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    impls = gate_impls(args)
    print("| F | impl | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB | max err alpha | max err dtheta |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for c in args.channels:
        rows = run_case(args, max(c // 2, 1), impls)
        base = {k: rows[0][k] for k in ("fwd_ms", "fwdbwd_ms")}
        for r in rows:
            if "note" in r:
                print(f"| {r['F']} | {r['impl']} | {r['note']} | | | | | |")
                continue
            speed = "" if r["impl"] == "unfused" else (
                f" ({base['fwd_ms'] / r['fwd_ms']:.2f}x)", f" ({base['fwdbwd_ms'] / r['fwdbwd_ms']:.2f}x)")
            sf, sb = speed or ("", "")
            print(f"| {r['F']} | {r['impl']} | {r['fwd_ms']:.3f}{sf} | {r['fwdbwd_ms']:.3f}{sb} | "
                  f"{_fmt(r['fwd_mib'], '.1f')} | {_fmt(r['fwdbwd_mib'], '.1f')} | "
                  f"{r['err_alpha']:.2e} | {r['err_dtheta']:.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
