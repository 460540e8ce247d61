"""Benchmark: gated-ABMIL training time per epoch, medattn's MIL trainer loop vs a CLAM-style loop.

Data: ``--bags`` in-memory bags of ``--patches`` patch features of dimension ``--dim`` (default 200 ×
5,000 × 1024, the size of UNI / CLAM ResNet-50 features; 4 GB of float32), half of them positive with
10 % of their patches shifted along one direction (so both loops learn something real).

- **CLAM-style**: what CLAM's ``train_loop`` does: one bag per optimizer step, a Python loop over a
  shuffled epoch, ``model(bag[None])``, cross-entropy, ``backward``, ``step``.
- **medattn**: :func:`medattn.engine.mil_epoch.train_fold` for one epoch exactly as ``medattn train``
  runs it (DistributedSampler order, ``collate_bags`` padding + masks, class-weighted loss,
  :class:`~medattn.engine.step.Stepper`, ``last.pt``/``best.pt`` written atomically), at each
  ``--batch-sizes`` (bags per step; 1 = the same optimisation as CLAM).

Both use the same model (``GatedABMIL(in_dim=D)``, L = 512, A = 256, dropout 0.25), AdamW (lr 2e-4),
the same bags and threads; runs are interleaved (CLAM, medattn b1, medattn b8, ...) ``--repeats`` times
and the median epoch time is reported, with the ratio CLAM / medattn.

Usage: python bench/abmil_train.py [--bags 200] [--patches 5000] [--dim 1024] [--batch-sizes 1 8]
       [--repeats 1] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medattn.config import load_mil_config
from medattn.data.bag_dataset import BagDataset
from medattn.engine.distributed import DistContext
from medattn.engine.mil_epoch import FoldJob, MilObjective, train_fold
from medattn.engine.mil_losses import class_weights
from medattn.models.abmil import GatedABMIL


def make_bags(n: int, patches: int, dim: int, seed: int = 0) -> tuple[list[torch.Tensor], np.ndarray]:
    """``n`` bags [patches, dim] float32 and labels [n] (half positive, 10 % witnesses shifted by 1.5 σ)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(dim, generator=g)
    direction /= direction.norm()
    labels = np.arange(n) % 2
    bags = []
    for i in range(n):
        x = torch.randn(patches, dim, generator=g)
        if labels[i]:
            x[: patches // 10] += 1.5 * direction
        bags.append(x)
    return bags, labels


def clam_epoch(bags: list[torch.Tensor], labels: np.ndarray, device: torch.device, seed: int) -> float:
    """One CLAM-style epoch (one bag per step); returns seconds."""
    torch.manual_seed(seed)
    model = GatedABMIL(in_dim=bags[0].shape[1]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-5)
    y = torch.as_tensor(labels, dtype=torch.long)
    order = torch.randperm(len(bags), generator=torch.Generator().manual_seed(seed)).tolist()
    _sync(device)
    t0 = time.perf_counter()
    for i in order:
        out = model(bags[i].to(device).unsqueeze(0))
        loss = F.cross_entropy(out["logits"], y[i:i + 1].to(device))
        loss.backward()
        opt.step()
        opt.zero_grad()
    _sync(device)
    return time.perf_counter() - t0


def medattn_epoch(bags: list[torch.Tensor], labels: np.ndarray, device: torch.device, batch_size: int,
                  seed: int) -> float:
    """One epoch of medattn's MIL trainer loop (checkpoints included); returns seconds."""
    cfg = load_mil_config(None, ["train.epochs=1", f"train.batch_size={batch_size}", "train.lr=2e-4",
                                 f"train.device={device.type}"])
    targets = {"label": labels}
    objective = MilObjective("classification", weights=class_weights(labels, 2))
    with tempfile.TemporaryDirectory() as tmp:
        job = FoldJob(0, seed, Path(tmp), BagDataset(bags, targets), BagDataset(bags, targets, []),
                      {"in_dim": bags[0].shape[1], "n_outputs": 2}, objective, lambda logits, ds: 0.0,
                      {"type": "classification", "classes": ["neg", "pos"]}, {"name": "bench", "dim": bags[0].shape[1]})
        _sync(device)
        t0 = time.perf_counter()
        train_fold(cfg, job, DistContext(device=device), progress=False)
        _sync(device)
        return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bags", type=int, default=200)
    p.add_argument("--patches", type=int, default=5000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    t0 = time.perf_counter()
    bags, labels = make_bags(a.bags, a.patches, a.dim)
    print(f"{a.bags} bags x {a.patches} patches x D={a.dim} ({sum(b.numel() for b in bags) * 4 / 1e9:.1f} GB) made "
          f"in {time.perf_counter() - t0:.0f} s; device {device}, {torch.get_num_threads()} threads", flush=True)
    times: dict[str, list[float]] = {"clam_b1": [], **{f"medattn_b{b}": [] for b in a.batch_sizes}}
    for r in range(a.repeats):
        times["clam_b1"].append(clam_epoch(bags, labels, device, seed=r))
        print(f"repeat {r}: CLAM-style    {times['clam_b1'][-1]:8.1f} s/epoch", flush=True)
        for b in a.batch_sizes:
            times[f"medattn_b{b}"].append(medattn_epoch(bags, labels, device, b, seed=r))
            print(f"repeat {r}: medattn b={b:<3} {times[f'medattn_b{b}'][-1]:8.1f} s/epoch", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'loop':<14}{'s/epoch':>10}{'bags/s':>10}{'CLAM / this':>13}")
    for k, v in med.items():
        print(f"{k:<14}{v:>10.1f}{a.bags / v:>10.2f}{med['clam_b1'] / v:>13.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "times": times, "median": med}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
