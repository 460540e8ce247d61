"""Benchmark a HIPPO greedy necessity search three ways: exact engine, generic batched engine, per-candidate loop.

The search (issue 6): a 10,000-patch bag (D = 384) through a gated ABMIL (L = 512, attention 256,
2 classes, eval mode), removing one patch per round (K = 1) for 5 % of the patches (500 rounds); each
round evaluates the bag minus every remaining patch and removes the one that most lowers p(class 1).

- **exact** (``medattn.explain.exact``): runs the whole search; the time includes building the engine
  (embedding all 10,000 patches once, the self-check against the model's forward pass). Median of
  ``--repeats`` runs.
- **loop** (HIPPO's public code: one forward pass per candidate bag): ``--loop-candidates`` candidates of
  round 1 are timed and the whole search is **extrapolated**: the cost of a forward pass is linear in the
  bag size, so search time = t_candidate(N) · Σ_r (N − r)(N − r − 1) / (N − 1) over the 500 rounds.
- **generic** (padded, masked batches): likewise ``--generic-candidates`` candidates of round 1, timed
  and **extrapolated** the same way (a full round at N = 10,000 is ~10^14 FLOP: about an hour here).

Agreement, on the same model. At full size in float64 (a float32 forward pass cannot resolve the near-ties
among 10,000 candidates: winning margins go down to ~1e-10): sampled round-1 candidates, including the exact
engine's best two, must give the exact engine's outputs from loop and generic; each of the 500 rounds' choice
is then implied wherever its winning margin exceeds twice the measured difference (reported). The complete
three-way check of the removal order (float32, every round run by every engine) uses a smaller bag of the
same model (``--check-n`` patches, 5 % of them removed), where the loop and generic engines finish.

Usage: python bench/counterfactual.py [--n 10000] [--dim 384] [--embed 512] [--fraction 0.05] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from medattn.explain.engines import GenericEngine, LoopEngine
from medattn.explain.exact import ExactEngine, numpy_outputs
from medattn.explain.search import greedy_search
from medattn.models.abmil import GatedABMIL
from medattn.models.mil_heads import outputs_from_logits


def probs(logits: torch.Tensor) -> torch.Tensor:
    return outputs_from_logits(logits, "classification")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="patches in the bag")
    p.add_argument("--dim", type=int, default=384, help="feature dimension D")
    p.add_argument("--embed", type=int, default=512, help="ABMIL embedding dimension L")
    p.add_argument("--attention", type=int, default=256, help="ABMIL attention dimension")
    p.add_argument("--fraction", type=float, default=0.05, help="fraction of the patches removed")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the exact search")
    p.add_argument("--loop-candidates", type=int, default=8, help="round-1 candidates timed for the loop")
    p.add_argument("--generic-candidates", type=int, default=64, help="round-1 candidates timed for generic")
    p.add_argument("--agree-candidates", type=int, default=8, help="round-1 candidates checked in float64")
    p.add_argument("--check-n", type=int, default=200, help="bag size of the full three-way order check")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def exact_search(model: GatedABMIL, x: np.ndarray, fraction: float) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    engine = ExactEngine(model, x, probs, numpy_outputs=numpy_outputs("classification"))
    t1 = time.perf_counter()
    result = greedy_search(engine, 1, max_fraction=fraction)
    return t1 - t0, time.perf_counter() - t1, result


def round_one_sample(engine, full: np.ndarray, cand: np.ndarray) -> tuple[float, np.ndarray]:
    """Seconds per candidate of round 1 and the sampled outputs."""
    engine.outputs_after_removal(full, cand[:1])  # warm-up
    t0 = time.perf_counter()
    out = engine.outputs_after_removal(full, cand)
    return (time.perf_counter() - t0) / len(cand), out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = GatedABMIL(in_dim=args.dim, embed_dim=args.embed, attention_dim=args.attention, n_outputs=2,
                       dropout=0.25).eval()
    x = np.random.default_rng(args.seed).standard_normal((args.n, args.dim), dtype=np.float32)
    rounds = max(1, round(args.fraction * args.n))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
          f"torch {torch.__version__}, threads={torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"bag N={args.n}, D={args.dim}, L={args.embed}, attention={args.attention}; greedy necessity, "
          f"K=1, {rounds} rounds ({args.fraction:.0%})")

    runs = [exact_search(model, x, args.fraction) for _ in range(args.repeats)]
    setup = statistics.median(r[0] for r in runs)
    search = statistics.median(r[1] for r in runs)
    exact_total = statistics.median(r[0] + r[1] for r in runs)
    result = runs[0][2]
    assert all(np.array_equal(r[2].order, result.order) for r in runs)
    print(f"exact:   {exact_total:.3f} s for the whole search (setup {setup:.3f} s + {rounds} rounds "
          f"{search:.3f} s), median of {args.repeats}")

    # extrapolation factor: Σ_r candidates(r) · bag size(r), relative to one candidate at the full size
    n = args.n
    work = sum((n - r) * (n - r - 1) for r in range(rounds)) / (n - 1)
    full = np.ones(n, dtype=bool)
    timed = {}
    for name, engine, count in (("loop", LoopEngine(model, x, probs), args.loop_candidates),
                                ("generic", GenericEngine(model, x, probs), args.generic_candidates)):
        per_candidate, _ = round_one_sample(engine, full, np.arange(count))
        timed[name] = per_candidate * work
        print(f"{name + ':':8} {timed[name]:,.0f} s EXTRAPOLATED ({timed[name] / 86400:.1f} days) from "
              f"{count} timed round-1 candidates ({per_candidate * 1e3:.1f} ms each); "
              f"exact is {timed[name] / exact_total:,.0f}x faster")

    # agreement at full size, in float64 (float32 forward passes cannot resolve the near-ties of a
    # 10,000-candidate round): sampled round-1 candidates, including exact's best two, must give exact's
    # outputs; each round's choice is then the same wherever its winning margin exceeds twice that error
    model64 = copy.deepcopy(model).double()
    x64 = x.astype(np.float64)
    exact64 = ExactEngine(model64, x64, probs, numpy_outputs=numpy_outputs("classification"))
    first = exact64.outputs_after_removal(full, np.arange(n))[:, 1]
    sample = np.unique(np.concatenate([np.argsort(first)[:2], np.arange(args.agree_candidates)]))
    max_err = 0.0
    for name, engine in (("loop", LoopEngine(model64, x64, probs)), ("generic", GenericEngine(model64, x64, probs))):
        out = engine.outputs_after_removal(full, sample)[:, 1]
        err = float(np.abs(out - first[sample]).max())
        assert err < 1e-9, f"{name} disagrees with exact by {err:.2e}"
        assert np.array_equal(np.argsort(out)[:2], np.argsort(first[sample])[:2])
        max_err = max(max_err, err)
    result64 = greedy_search(exact64, 1, max_fraction=args.fraction)
    margins, current = [], full.copy()
    for idx in result64.order:
        vals = np.sort(exact64.outputs_after_removal(current, np.flatnonzero(current))[:, 1])
        margins.append(vals[1] - vals[0])
        current[idx] = False
    margins = np.asarray(margins)
    implied = int((margins > 2 * max_err).sum())
    same32 = int(np.argmax(result.order != result64.order)) if (result.order != result64.order).any() else rounds
    print(f"agreement (float64, {len(sample)} round-1 candidates incl. exact's best two): max |loop or generic − "
          f"exact| = {max_err:.1e}; {implied}/{rounds} rounds have a winning margin above twice that "
          f"(smallest margin {margins.min():.1e}); the float32 exact search matches the float64 one for its "
          f"first {same32} rounds")

    # full three-way removal-order check on a smaller bag of the same model
    m = args.check_n
    xs = x[:m]
    check_rounds = max(1, round(args.fraction * m))
    orders, times = {}, {}
    for name, cls in (("exact", ExactEngine), ("generic", GenericEngine), ("loop", LoopEngine)):
        t0 = time.perf_counter()
        r = greedy_search(cls(model, xs, probs), 1, max_fraction=args.fraction)
        times[name], orders[name] = time.perf_counter() - t0, r
    for name in ("generic", "loop"):
        assert np.array_equal(orders[name].order, orders["exact"].order), f"{name} removal order differs"
        assert np.allclose(orders[name].outputs, orders["exact"].outputs, atol=1e-5)
    print(f"check N={m}, {check_rounds} rounds, all three run in full: same removal order and outputs; "
          + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))

    report = {"n": n, "dim": args.dim, "embed": args.embed, "rounds": rounds, "threads": torch.get_num_threads(),
              "exact_s": exact_total, "exact_setup_s": setup, "exact_search_s": search,
              "loop_s_extrapolated": timed["loop"], "generic_s_extrapolated": timed["generic"],
              "speedup_vs_loop": timed["loop"] / exact_total, "speedup_vs_generic": timed["generic"] / exact_total,
              "max_engine_difference_float64": max_err, "rounds_order_implied": implied,
              "load_average": os.getloadavg()[0],
              "check": {"n": m, "rounds": check_rounds, "seconds": times}}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
