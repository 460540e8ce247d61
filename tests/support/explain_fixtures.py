"""Real inputs for the explain/report tests: synthetic slides, planted bags and small MIL checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medattn.config.mil_schema import MilConfig, PatchConfig
from medattn.data.bag_synth import PlantedBags, planted_bags, write_planted_bags
from medattn.data.handcrafted import HandcraftedEncoder
from medattn.engine.mil_checkpoint import save_mil_checkpoint
from medattn.models.abmil import GatedABMIL

CLASSES = ["normal", "tumour"]


def mil_checkpoint(path: Path, in_dim: int, bags: PlantedBags | None = None, steps: int = 0,
                   patch_size: int = 128, magnification: float = 10.0, encoder: str = "handcrafted") -> Path:
    """A small gated ABMIL classifier saved with ``save_mil_checkpoint``; trained ``steps`` Adam steps on
    ``bags`` (one bag per step) when given, else untrained (seeded)."""
    torch.manual_seed(0)
    model = GatedABMIL(in_dim=in_dim, embed_dim=16, attention_dim=8, n_outputs=2, dropout=0.0)
    if bags is not None and steps:
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        for step in range(steps):
            i = step % len(bags.labels)
            logits = model(torch.as_tensor(bags.features[i])[None])["logits"]
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor([int(bags.labels[i])]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    cfg = MilConfig(patch=PatchConfig(magnification=magnification, size=patch_size))
    cfg.data.classes = list(CLASSES)
    cfg.encoder.name = encoder
    return save_mil_checkpoint(path, model, cfg, {"type": "classification", "classes": list(CLASSES)},
                               {"name": encoder, "dim": in_dim})


def handcrafted_dim() -> int:
    """Feature dimension of the handcrafted patch encoder (what ``medattn explain`` extracts from slides)."""
    return int(HandcraftedEncoder().dim)


def planted_folder(out: Path, n_bags: int = 12, dim: int = 16, seed: int = 0) -> tuple[PlantedBags, Path]:
    """Planted-signal bags (strong signal) written under ``out``; returns them and ``out/bags``."""
    bags = planted_bags(n_bags=n_bags, n_patches=(40, 60), dim=dim, witness_rate=(0.1, 0.2), signal=3.0, seed=seed)
    write_planted_bags(out, bags)
    return bags, out / "bags"


def positive_bag(bags: PlantedBags) -> int:
    """Index of the first bag with planted positives."""
    return int(np.flatnonzero(bags.labels == 1)[0])
