"""``medattn synth OUT --kind wsi|bags``: the whole-slide synthetic data kinds of the synth command.

The ``phantom`` kind (the default: segmentation phantoms in the dataset.json layout) is handled by
``medattn.cli.cmd_synth`` itself; :func:`run` returns None for it.
"""

from __future__ import annotations

import argparse

__all__ = ["KINDS", "add_arguments", "run"]

KINDS = ("phantom", "wsi", "bags")


def add_arguments(s: argparse.ArgumentParser) -> None:
    """Add ``--kind`` and the options of the ``wsi`` and ``bags`` kinds to the synth parser ``s``."""
    s.add_argument("--kind", choices=KINDS, default="phantom",
                   help="phantom: segmentation phantoms (dataset.json); wsi: pyramidal TIFF slides with planted "
                        "tumour regions + slides.csv; bags: planted-signal HDF5 feature bags + slides.csv")
    g = s.add_argument_group("--kind wsi")
    g.add_argument("--n-slides", type=int, default=8)
    g.add_argument("--n-patients", type=int, default=None, help="patients (default: one per slide)")
    g.add_argument("--size", type=int, nargs=2, default=(4096, 3072), metavar=("W", "H"),
                   help="level-0 size in pixels")
    g.add_argument("--mpp", type=float, default=0.5, help="µm per pixel at level 0")
    g.add_argument("--magnification", type=float, default=20.0)
    g = s.add_argument_group("--kind bags")
    g.add_argument("--n-bags", type=int, default=100)
    g.add_argument("--n-patches", type=int, nargs=2, default=(100, 300), metavar=("LOW", "HIGH"))
    g.add_argument("--dim", type=int, default=32, help="feature dimension")
    g.add_argument("--witness-rate", type=float, nargs=2, default=(0.05, 0.2), metavar=("LOW", "HIGH"),
                   help="fraction of positive patches in a positive bag")
    g.add_argument("--signal", type=float, default=1.0, help="separation of positive patches (1: 3 σ)")
    g = s.add_argument_group("--kind wsi and bags")
    g.add_argument("--positive-fraction", type=float, default=0.5, help="fraction of tumour/positive cases")


def run(a: argparse.Namespace) -> int | None:
    """Write the ``wsi`` or ``bags`` data set for parsed arguments ``a``; None for ``--kind phantom``."""
    if a.kind == "wsi":
        from medattn.data.wsi_synth import write_synthetic_slides

        path = write_synthetic_slides(a.out, n_slides=a.n_slides, n_patients=a.n_patients, size=tuple(a.size),
                                      mpp=a.mpp, magnification=a.magnification,
                                      positive_fraction=a.positive_fraction, seed=a.seed)
    elif a.kind == "bags":
        from medattn.data.bag_synth import planted_bags, write_planted_bags

        bags = planted_bags(n_bags=a.n_bags, n_patches=tuple(a.n_patches), dim=a.dim,
                            positive_fraction=a.positive_fraction, witness_rate=tuple(a.witness_rate),
                            signal=a.signal, seed=a.seed)
        path = write_planted_bags(a.out, bags)
    else:
        return None
    print(f"wrote {path}")
    return 0
