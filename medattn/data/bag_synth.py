"""Planted-signal feature bags: MIL data with known instance labels, for tests, demos and benchmarks.

Negative instances are drawn from N(0, I) in D dimensions. Positive ("witness") instances are drawn
from N(shift, I) with ``shift = SIGNAL_SCALE · signal · u`` along one fixed random unit direction ``u``
(the same for every bag of a seed), so along ``u`` the two classes are ``3 · signal`` noise standard
deviations apart (an instance AUC of Φ(3·signal/√2) ≈ 0.98 at ``signal = 1``; 0 makes positives
indistinguishable). A positive bag (label 1) holds a fraction ``witness_rate`` (uniform in the given
range, at least one patch) of positives, clustered in one spatially contiguous region of the patch
grid, as a tumour would be; a negative bag holds none.

Survival targets: event times are exponential with hazard ``exp(HAZARD_POSITIVE · label +
HAZARD_WITNESS · witness_fraction / max_rate) / 60``, so risk grows with the positives; independent
exponential censoring is tuned to censor about 25 % of the bags.

:func:`write_planted_bags` writes real HDF5 bags (:func:`medattn.data.bags.write_bag`) with the slide
table and the instance labels::

    out/bags/<slide_id>.h5      features [N, D] float32, coords [N, 2] int64 (a 256-px grid)
    out/slides.csv              slide_id, patient_id, label (negative|positive), time, event
    out/instances.csv           slide_id, patch_index, positive (0|1)
    out/synth.json              generator and arguments
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medattn.data.bags import write_bag
from medattn.data.synth_folder import staged_folder, write_csv
from medattn.errors import ConfigError

__all__ = ["PATCH_SIZE", "SIGNAL_SCALE", "PlantedBags", "planted_bags", "signal_direction", "write_planted_bags"]

GENERATOR = "medattn.data.bag_synth"
PATCH_SIZE = 256  #: side of the grid cells the coordinates describe (level-0 px)
SIGNAL_SCALE = 3.0  #: positives sit SIGNAL_SCALE · signal noise standard deviations along the direction
HAZARD_POSITIVE = 1.0  #: log hazard ratio of a positive bag
HAZARD_WITNESS = 3.0  #: log hazard ratio per (witness fraction / largest witness rate)
CENSORED_FRACTION = 0.25


@dataclass
class PlantedBags:
    """Bags with planted positives.

    Attributes:
        features: per bag ``[N_i, D]`` float32.
        coords: per bag ``[N_i, 2]`` int64 level-0 ``(x, y)`` on a :data:`PATCH_SIZE` grid.
        instance_labels: per bag ``[N_i]`` bool, True = planted positive.
        labels: ``[B]`` int, 1 = the bag has positives.
        times: ``[B]`` float event or censoring times; events: ``[B]`` int, 1 = event observed.
        slide_ids, patient_ids: ``[B]`` names (one patient per bag).
        direction: ``[D]`` float32 unit vector the positives are shifted along.
    """

    features: list[np.ndarray]
    coords: list[np.ndarray]
    instance_labels: list[np.ndarray]
    labels: np.ndarray
    times: np.ndarray
    events: np.ndarray
    slide_ids: list[str]
    patient_ids: list[str]
    direction: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)

    @property
    def witness_fractions(self) -> np.ndarray:
        """``[B]`` float: fraction of positive instances per bag."""
        return np.array([lab.mean() for lab in self.instance_labels], dtype=float)


def signal_direction(dim: int, seed: int = 0) -> np.ndarray:
    """The unit direction ``[dim]`` float32 along which :func:`planted_bags` shifts positives for ``seed``."""
    u = np.random.default_rng([seed, 7_000_001]).standard_normal(dim)
    return (u / np.linalg.norm(u)).astype(np.float32)


def _grid(n: int) -> np.ndarray:
    """``[n, 2]`` int64 ``(x, y)`` of ``n`` cells filling rows of a near-square grid."""
    cols = math.ceil(math.sqrt(n))
    idx = np.arange(n)
    return np.stack([idx % cols, idx // cols], axis=1).astype(np.int64) * PATCH_SIZE


def _cluster(rng: np.random.Generator, coords: np.ndarray, k: int) -> np.ndarray:
    """``[N]`` bool with ``k`` True: the cells nearest a random centre, distances jittered (irregular blob)."""
    centre = coords[rng.integers(len(coords))].astype(float)
    dist = np.linalg.norm(coords - centre, axis=1) / PATCH_SIZE + rng.uniform(0, 1.5, len(coords))
    chosen = np.zeros(len(coords), bool)
    chosen[np.argsort(dist, kind="stable")[:k]] = True
    return chosen


def _witness_count(rate: float, n: int, witness_rate: tuple[float, float]) -> int:
    """round(rate · n), kept so that k / n stays within ``witness_rate`` where n allows, and >= 1."""
    lo, hi = math.ceil(witness_rate[0] * n - 1e-9), math.floor(witness_rate[1] * n + 1e-9)
    k = min(max(round(rate * n), lo), max(hi, lo))
    return max(1, min(n, k))


def _check_args(n_bags: int, n_patches: tuple[int, int], dim: int, positive_fraction: float,
                witness_rate: tuple[float, float], signal: float) -> None:
    if n_bags < 1:
        raise ConfigError(f"n_bags must be >= 1, got {n_bags}")
    if len(n_patches) != 2 or not 1 <= n_patches[0] <= n_patches[1]:
        raise ConfigError(f"n_patches must be (low, high) with 1 <= low <= high, got {n_patches}")
    if dim < 1:
        raise ConfigError(f"dim must be >= 1, got {dim}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ConfigError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if len(witness_rate) != 2 or not 0.0 < witness_rate[0] <= witness_rate[1] <= 1.0:
        raise ConfigError(f"witness_rate must be (low, high) with 0 < low <= high <= 1, got {witness_rate}")
    if not math.isfinite(signal):
        raise ConfigError(f"signal must be a finite number, got {signal}")


def _survival(rng: np.random.Generator, labels: np.ndarray, witness: np.ndarray,
              max_rate: float) -> tuple[np.ndarray, np.ndarray]:
    hazard = np.exp(HAZARD_POSITIVE * labels + HAZARD_WITNESS * witness / max_rate) / 60.0
    event_time = rng.exponential(1.0 / hazard)
    lo, hi = 0.0, 10.0
    for _ in range(60):  # censoring rate c with mean P(C < T) = c / (c + hazard) = CENSORED_FRACTION
        c = 0.5 * (lo + hi)
        lo, hi = (c, hi) if np.mean(c / (c + hazard)) < CENSORED_FRACTION else (lo, c)
    censor_time = rng.exponential(1.0 / max(c, 1e-12), size=len(hazard))
    events = (event_time <= censor_time).astype(np.int64)
    return np.minimum(event_time, censor_time), events


def planted_bags(n_bags: int = 100, n_patches: tuple[int, int] = (100, 300), dim: int = 32,
                 positive_fraction: float = 0.5, witness_rate: tuple[float, float] = (0.05, 0.2),
                 signal: float = 1.0, seed: int = 0) -> PlantedBags:
    """Generate ``n_bags`` bags with planted positive instances (see the module notes).

    Args:
        n_bags: number of bags B.
        n_patches: (low, high) inclusive range of patches per bag.
        dim: feature dimension D.
        positive_fraction: fraction of positive bags (``round(positive_fraction · B)``, seeded order).
        witness_rate: (low, high) range of the fraction of positives in a positive bag.
        signal: separation of positives along the signal direction, in units of ``SIGNAL_SCALE`` σ.
        seed: everything is drawn from ``numpy.random.default_rng`` seeded by it.

    Returns:
        :class:`PlantedBags`; same arguments → identical arrays.
    """
    _check_args(n_bags, tuple(n_patches), dim, positive_fraction, tuple(witness_rate), signal)
    rng = np.random.default_rng(seed)
    direction = signal_direction(dim, seed)
    labels = np.zeros(n_bags, np.int64)
    labels[rng.permutation(n_bags)[: round(positive_fraction * n_bags)]] = 1
    shift = (SIGNAL_SCALE * signal * direction).astype(np.float32)
    width = max(3, len(str(n_bags - 1)))
    features, coords, instances = [], [], []
    for label in labels:
        n = int(rng.integers(n_patches[0], n_patches[1] + 1))
        grid = _grid(n)
        feats = rng.standard_normal((n, dim), dtype=np.float32)
        positive = np.zeros(n, bool)
        if label:
            k = _witness_count(rng.uniform(*witness_rate), n, witness_rate)
            positive = _cluster(rng, grid, k)
            feats[positive] += shift
        features.append(feats)
        coords.append(grid)
        instances.append(positive)
    witness = np.array([p.mean() for p in instances])
    times, events = _survival(rng, labels.astype(float), witness, float(witness_rate[1]))
    return PlantedBags(features=features, coords=coords, instance_labels=instances, labels=labels,
                       times=np.round(times, 3), events=events,
                       slide_ids=[f"slide_{i:0{width}d}" for i in range(n_bags)],
                       patient_ids=[f"patient_{i:0{width}d}" for i in range(n_bags)], direction=direction)


def write_planted_bags(out: str | Path, bags: PlantedBags) -> Path:
    """Write ``bags`` as HDF5 bags plus ``slides.csv`` and ``instances.csv`` under ``out`` (layout above).

    ``out`` is built in a temporary folder and swapped in; an existing ``out`` is replaced only when
    empty or written by a medattn synthetic generator.

    Returns:
        ``out/slides.csv``.
    """
    out = Path(out)
    dim = int(bags.features[0].shape[1]) if len(bags) else 0
    with staged_folder(out, GENERATOR, {"n_bags": len(bags), "dim": dim}) as tmp:
        inst_rows: list[list] = []
        for sid, feats, xy, pos in zip(bags.slide_ids, bags.features, bags.coords, bags.instance_labels,
                                       strict=True):
            attrs = {"slide_id": sid, "patch_size": PATCH_SIZE, "patch_size_level0": PATCH_SIZE, "level": 0,
                     "magnification": 20.0, "mpp": 0.5, "encoder": "planted", "encoder_version": "1"}
            write_bag(tmp / "bags" / f"{sid}.h5", feats, xy, attrs)
            inst_rows += [[sid, i, int(p)] for i, p in enumerate(pos)]
        rows = [[sid, pid, "positive" if lab else "negative", f"{t:g}", int(e)]
                for sid, pid, lab, t, e in zip(bags.slide_ids, bags.patient_ids, bags.labels, bags.times,
                                               bags.events, strict=True)]
        write_csv(tmp / "slides.csv", ["slide_id", "patient_id", "label", "time", "event"], rows)
        write_csv(tmp / "instances.csv", ["slide_id", "patch_index", "positive"], inst_rows)
    return out / "slides.csv"
