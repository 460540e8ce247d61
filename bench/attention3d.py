"""Benchmark: medattn's blocked 3-D attention against today's ways of computing it, in one run.

Per shape (feature map, partition, head_dim, bias or not) and mode (forward; forward + backward) it
reports for every implementation: the median time (ms); effective TFLOP/s counting useful FLOPs only,
4·B·heads·N·W·d forward and 2.5× that for forward + backward (N = D·H·W tokens, W = wd·wh·ww); the
% of the roofline min(matmul peak, W/e × bandwidth) (e = bytes per element, so W/2 for bf16), with both
ceilings measured once at the start (a big matmul; a big device-to-device copy); the peak memory above
the inputs (CUDA); and the max abs error against medattn's reference in fp32 (forward: output;
forward + backward: the largest of dq, dk, dv and d bias_table).

Implementations (``bench/attention3d_baselines.py``): ``medattn`` = ``blocked_attention3d`` (Triton on
CUDA, the PyTorch reference on CPU); ``naive`` partition → matmul + bias + softmax → matmul, eager and
``torch.compile``-d; ``sdpa`` on partitioned tensors with a float bias mask; ``flex`` FlexAttention with
a ``score_mod`` bias, compiled; ``natten`` na3d where installed (no bias; a different function, so no
error). Compiled baselines run on CUDA only (``--compile`` forces them on CPU); unavailable ones are
listed as skipped with the reason.

    python bench/attention3d.py            # CUDA: D-Former stages 48^3..6^3, B=2, d 32 and 64, bf16
    python bench/attention3d.py --quick    # small shapes, fp32; the CPU run (reference vs naive)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention3d_baselines import (
    Unsupported,
    compiled_naive_attention3d,
    flex_attention3d,
    naive_attention3d,
    natten_attention3d,
    sdpa_attention3d,
)
from medattn.kernels import Partition, bias_table_size, blocked_attention3d, reference_blocked_attention3d

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WINDOWS = {"2x8x8": (2, 8, 8), "4^3": (4, 4, 4), "8^3": (8, 8, 8)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized run: stages 24, 12, 6; d 32; 2 heads; fp32")
    p.add_argument("--stages", default=None, help="feature-map edge lengths (default 48,24,12,6; --quick 24,12,6)")
    p.add_argument("--head-dims", default="32,64")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--impls", default="medattn,naive,naive-compiled,sdpa,flex,natten")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="run the torch.compile baselines on CPU too")
    args = p.parse_args(argv)
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.head_dims, args.heads, args.warmup, args.repeats = "32", 2, 2, 7
    args.stages = args.stages or ("24,12,6" if args.quick else "48,24,12,6")
    args.dtype = DTYPES[args.dtype or ("bfloat16" if args.device.type == "cuda" else "float32")]
    args.stages = tuple(int(s) for s in args.stages.split(","))
    args.head_dims = tuple(int(d) for d in args.head_dims.split(","))
    args.impls = tuple(args.impls.split(","))
    return args


def shapes(stages: tuple[int, ...]) -> list[tuple[int, str, Partition]]:
    """(edge n, label, partition): local windows 2x8x8, 4^3, 8^3 and dilated 4^3 / 8^3 groups spanning the map."""
    out = []
    for n in stages:
        for label, w in WINDOWS.items():
            if max(w) <= n:
                out.append((n, label, Partition(w)))
        for w in (4, 8):
            if n // w >= 2:
                out.append((n, f"{w}^3 dil {n // w}", Partition((w, w, w), dilation=(n // w,) * 3)))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def ceilings(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """Measured matmul peak (FLOP/s) in ``dtype`` and copy bandwidth (bytes/s, read + write)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    ms = min(_median_ms(lambda: a @ b, device, 3, 10) for _ in range(3))  # best of 3 medians: a ceiling
    peak = 2 * n**3 / (ms * 1e-3)
    numel = (2**30 if device.type == "cuda" else 2**28) // 4
    src, dst = torch.randn(numel, device=device), torch.empty(numel, device=device)
    ms = min(_median_ms(lambda: dst.copy_(src), device, 3, 10) for _ in range(3))
    return peak, 2 * numel * 4 / (ms * 1e-3)


def implementations(args: argparse.Namespace) -> dict[str, Callable | str]:
    """name → attention function ``(q, k, v, partition, bias_table)``, or why it is skipped."""
    cuda = args.device.type == "cuda"
    compile_ok = cuda or args.compile
    why_compile = "skipped: compiled baselines run on CUDA (--compile forces them on CPU)"
    impls: dict[str, Callable | str] = {
        "medattn": blocked_attention3d,
        "naive": naive_attention3d,
        "naive-compiled": compiled_naive_attention3d(dynamic=False) if compile_ok else why_compile,
        "sdpa": sdpa_attention3d,
    }
    if compile_ok:
        from torch.nn.attention.flex_attention import flex_attention

        impls["flex"] = flex_attention3d(torch.compile(flex_attention, dynamic=False))
    else:
        impls["flex"] = why_compile
    try:
        import natten  # noqa: F401

        impls["natten"] = natten_attention3d if cuda else "skipped: NATTEN has no CPU path"
    except ImportError:
        impls["natten"] = "skipped: natten not installed"
    return {k: v for k, v in impls.items() if k in args.impls}


def _inputs(args, n: int, d: int, partition: Partition, bias: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    shape = (args.batch, n, n, n, args.heads, d)
    q, k, v, g = (torch.randn(shape, generator=gen).to(args.device, args.dtype) for _ in range(4))
    table = (0.5 * torch.randn(args.heads, bias_table_size(partition.window), generator=gen)).to(args.device)
    return q, k, v, (table.to(args.dtype) if bias else None), g


def _ref(q, k, v, table, g, partition):
    """fp32 reference output and gradients (dq, dk, dv, d table)."""
    leaves = [None if t is None else t.detach().float().requires_grad_(True) for t in (q, k, v, table)]
    out = reference_blocked_attention3d(*leaves[:3], partition, leaves[3])
    wrt = [t for t in leaves if t is not None]
    return out.detach(), torch.autograd.grad(out, wrt, g.float())


def measure(fns: dict[str, Callable], args, q, k, v, table, g, partition, mode: str, ref) -> dict[str, dict | str]:
    """Time every ``fns`` entry in ``mode`` ("fwd" or "fwd+bwd"), interleaved: each repeat runs them all in
    turn, so load changes on the machine hit all alike. Median ms, peak memory (CUDA) and the max error
    against the fp32 reference per name, or the reason a baseline could not run."""
    leaves = [None if t is None else t.detach().requires_grad_(mode != "fwd") for t in (q, k, v, table)]
    wrt = [t for t in leaves if t is not None]

    def step(fn):
        if mode == "fwd":
            with torch.no_grad():
                return fn(*leaves[:3], partition, leaves[3]), None
        out = fn(*leaves[:3], partition, leaves[3])
        return out, torch.autograd.grad(out, wrt, g)

    results: dict[str, dict | str] = {}
    for name, fn in fns.items():
        try:
            out, grads = step(fn)  # first call: compiles, or fails
        except Unsupported as exc:
            results[name] = f"skipped: {exc}"
            continue
        except (RuntimeError, ValueError) as exc:  # OOM, a dtype a baseline lacks, ...
            results[name] = f"failed: {str(exc).splitlines()[0][:100]}"
            continue
        pairs = [(out, ref[0])] if mode == "fwd" else list(zip(grads, ref[1]))
        results[name] = {"err": max((a.float() - b).abs().max().item() for a, b in pairs), "times": [],
                         "peak_mib": None}
        del out, grads
        if args.device.type == "cuda":
            _sync(args.device)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(fn)
            _sync(args.device)
            results[name]["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        for _ in range(args.warmup):
            step(fn)
    timed = {name: fn for name, fn in fns.items() if isinstance(results[name], dict)}
    for _ in range(args.repeats):
        for name, fn in timed.items():
            _sync(args.device)
            start = time.perf_counter()
            step(fn)
            _sync(args.device)
            results[name]["times"].append((time.perf_counter() - start) * 1e3)
    for name in timed:
        results[name]["ms"] = statistics.median(results[name]["times"])
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    elem = torch.finfo(args.dtype).bits // 8
    peak, bw = ceilings(args.device, args.dtype)
    dev = torch.cuda.get_device_name() if args.device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# blocked 3-D attention: B={args.batch}, heads={args.heads}, {str(args.dtype).removeprefix('torch.')}, "
          f"{dev}, torch {torch.__version__}, median of {args.repeats}")
    print(f"# ceilings: matmul {peak / 1e12:.3f} TFLOP/s, copy {bw / 1e9:.1f} GB/s; roofline min(peak, W/{elem} x bw)")
    impls = implementations(args)
    for name, why in impls.items():
        if isinstance(why, str):
            print(f"# {name}: {why}")
    runnable = {k: f for k, f in impls.items() if not isinstance(f, str)}
    print("| map | partition | d | bias | mode | impl | ms | TFLOP/s | % roofline | peak MiB | max err |")
    print("|---|---|---:|---|---|---|---:|---:|---:|---:|---:|")
    seed = 0
    ratios: dict[tuple[str, str], list[float]] = {}
    for n, label, partition in shapes(args.stages):
        W = partition.block_size
        roof = min(peak, W / elem * bw)
        for d in args.head_dims:
            for bias in (False, True):
                seed += 1
                q, k, v, table, g = _inputs(args, n, d, partition, bias, seed)
                ref = _ref(q, k, v, table, g, partition)
                for mode in ("fwd", "fwd+bwd"):
                    flops = 4 * args.batch * args.heads * n**3 * W * d * (2.5 if mode != "fwd" else 1.0)
                    results = measure(runnable, args, q, k, v, table, g, partition, mode, ref)
                    ours = results.get("medattn")
                    for name, r in results.items():
                        if name != "medattn" and isinstance(r, dict) and isinstance(ours, dict):
                            ratios.setdefault((mode, name), []).append(r["ms"] / ours["ms"])
                    for name, r in results.items():
                        head = f"| {n}^3 | {label} | {d} | {'yes' if bias else 'no'} | {mode} | {name} |"
                        if isinstance(r, str):
                            print(f"{head} {r} | | | | |")
                            continue
                        tflops = flops / (r["ms"] * 1e-3) / 1e12
                        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
                        err = "n/a" if name == "natten" else f"{r['err']:.1e}"
                        print(f"{head} {r['ms']:.2f} | {tflops:.4f} | {100 * tflops * 1e12 / roof:.1f} | {mem} | "
                              f"{err} |", flush=True)
    print("\n| mode | baseline | baseline ms / medattn ms: geometric mean | min | max | shapes |")
    print("|---|---|---:|---:|---:|---:|")
    for (mode, name), rs in ratios.items():
        gmean = math.exp(sum(math.log(r) for r in rs) / len(rs))
        print(f"| {mode} | {name} | {gmean:.2f} | {min(rs):.2f} | {max(rs):.2f} | {len(rs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
