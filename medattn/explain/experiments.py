"""HIPPO-style counterfactual experiments on one bag, written as CSV files and ``summary.json``.

:func:`explain_bag` runs the experiments a :class:`CounterfactualSpec` asks for on one engine
(:func:`~medattn.explain.engines.make_engine`) and writes ``out_dir/counterfactuals/<experiment>.csv``
with the columns ``experiment, round, patch_index, x, y, <one per output>, delta`` (``random_removal``
adds ``seed``). Round 0 is the whole bag (``patch_index`` -1); the rows of round r list the patches that
round acted on, each carrying the outputs of the bag *after* round r and ``delta`` = target output
minus the baseline's. What "acted on" means per experiment:

=====================  =============================================================================
single_removal         round 1: each patch removed alone (necessity of every patch; N rows)
single_patch           round 1: a bag of that one patch only (sufficiency of every patch)
ranked_removal         round i: the patches removed to reach the i-th percentage, highest attention
                       first (cumulative)
random_removal         the same counts in random order, once per seed (column ``seed``)
greedy_necessity       round r: the patch(es) the greedy search removed (:mod:`.search`)
greedy_sufficiency     round r: the patch(es) added to a bag that started empty
region_remove          round 1: the patches inside the region, all removed
region_keep            round 1: the patches inside the region, the only ones kept
transplant             round i: donor patches added (``patch_index``, x, y are the donor bag's), highest
                       donor attention first, cumulative
=====================  =============================================================================
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medattn.data.bags import Bag
from medattn.engine.mil_checkpoint import MilModel
from medattn.errors import ConfigError, DataError
from medattn.explain.engines import check_indices, make_engine
from medattn.explain.exact import ExactEngine, numpy_outputs
from medattn.explain.regions import Region, patches_in_region, region_for_bag
from medattn.explain.search import greedy_search
from medattn.io.atomic import atomic_path, atomic_write_json

EXPERIMENTS = ("single_removal", "single_patch", "ranked_removal", "random_removal", "greedy_necessity",
               "greedy_sufficiency", "region_remove", "region_keep", "transplant")
ACTS_ON = {"single_removal": "removed", "single_patch": "kept", "ranked_removal": "removed",
           "random_removal": "removed", "greedy_necessity": "removed", "greedy_sufficiency": "added",
           "region_remove": "removed", "region_keep": "kept", "transplant": "added"}


@dataclass
class CounterfactualSpec:
    """Which counterfactual experiments to run on a bag, and how.

    ``experiments`` None runs the six bag-only experiments, plus ``region_*`` when ``region`` is set and
    ``transplant`` when ``donor`` is set. ``target`` names the output the experiments measure (an output
    name such as ``p_tumour`` or ``risk``, or its index); default: the predicted class's probability,
    or the risk. Greedy searches stop by ``max_rounds``, ``max_fraction`` (of the bag), ``threshold``
    (on the target) or a class flip (``stop_on_flip``), whichever comes first.
    """

    experiments: list[str] | None = None
    target: str | int | None = None
    engine: str = "auto"  #: auto | exact | generic | loop
    percentages: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0, 20.0, 50.0])
    random_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    per_round: int = 1
    max_rounds: int | None = None
    max_fraction: float | None = 0.1
    threshold: float | None = None
    stop_on_flip: bool = False
    necessity_objective: str = "decrease"  #: decrease | increase | least
    sufficiency_objective: str = "increase"
    region: str | Path | Region | dict | None = None  #: mask image / GeoJSON file, GeoJSON dict or Region
    region_min_inside: float = 0.5  #: fraction of a patch's area inside the region to count as inside
    slide_size: tuple[int, int] | None = None  #: level-0 (width, height); default from the bag
    donor: Bag | None = None  #: the bag transplanted patches come from
    donor_patches: list[int] | None = None  #: donor patch indices in the order added (default: by attention)
    transplant_counts: list[int] | None = None  #: cumulative numbers of donor patches (default 1, 2, 5, ...)
    memory_mb: float = 512.0  #: generic engine batch budget


@dataclass
class CounterfactualSummary:
    """What :func:`explain_bag` did; also written as ``counterfactuals/summary.json``."""

    slide_id: str
    n_patches: int
    output_names: list[str]
    baseline: dict[str, float]
    prediction: str | None
    target: str
    engine: str
    timings: dict[str, float]
    experiments: dict[str, dict[str, Any]]
    folder: Path

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "folder": str(self.folder)}


def _target_index(spec: CounterfactualSpec, names: list[str], baseline: np.ndarray, task: str) -> int:
    if spec.target is None:
        return int(np.argmax(baseline)) if task == "classification" else 0
    if isinstance(spec.target, int) and not isinstance(spec.target, bool):
        if not 0 <= spec.target < len(names):
            raise ConfigError(f"target output {spec.target} is out of range (outputs: {', '.join(names)})")
        return spec.target
    for i, name in enumerate(names):
        if spec.target in (name, name.removeprefix("p_")):
            return i
    raise ConfigError(f"unknown target output '{spec.target}' (outputs: {', '.join(names)})")


def _counts(n: int, percentages: list[float]) -> list[int]:
    counts = sorted({min(n - 1, max(1, round(p / 100.0 * n))) for p in percentages if p > 0})
    if not counts or n < 2:
        raise DataError(f"the bag has {n} patch(es): nothing to remove")
    return counts


class _Run:
    """One explain_bag call: the engine, the baseline and the target, and one method per experiment family.

    Each method returns the CSV rows and the experiment's summary entries.
    """

    def __init__(self, mil: MilModel, bag: Bag, spec: CounterfactualSpec, requested: list[str]) -> None:
        self.mil, self.bag, self.spec = mil, bag, spec
        self.where = bag.path or bag.attrs.get("slide_id") or "bag"
        self.n = n = len(bag.features)
        self.names = list(mil.output_names)
        self.task = mil.task.get("type", "classification")
        self.coords = np.asarray(bag.coords, dtype=np.int64)
        self.size0 = float(bag.attrs.get("patch_size_level0") or bag.attrs.get("patch_size") or 1)
        want = mil.encoder.get("dim")
        if want and bag.features.ndim == 2 and int(want) != bag.features.shape[1]:
            raise DataError(f"bag features have dimension {bag.features.shape[1]}, the model expects {want}",
                            self.where)
        self.region = region_for_bag(spec.region, self.coords, self.size0, bag.attrs, spec.slide_size) \
            if {"region_remove", "region_keep"} & set(requested) else None
        pool = bag.features
        if "transplant" in requested:
            donor = spec.donor
            if donor.features.shape[1:] != bag.features.shape[1:]:
                raise DataError(f"donor features have dimension {donor.features.shape[1]}, the bag "
                                f"{bag.features.shape[1]}", donor.path or "donor")
            if spec.donor_patches is not None:
                check_indices(spec.donor_patches, len(donor.features), "donor patch index")
            pool = np.concatenate([bag.features, donor.features])
        self.engine = make_engine(mil.model, np.ascontiguousarray(pool, dtype=np.float32), mil.outputs,
                                  spec.engine, spec.memory_mb,
                                  numpy_outputs(self.task, mil.task.get("survival_loss") or "nll"))
        self.full = np.zeros(self.engine.n_pool, dtype=bool)
        self.full[:n] = True
        self.baseline = self.engine.outputs_for_sets(self.full[None])[0]
        self.target = _target_index(spec, self.names, self.baseline, self.task)

    def rows(self, name: str, outputs: np.ndarray, moved: list[np.ndarray], seed: int | None = None,
             xy: np.ndarray | None = None, offset: int = 0) -> list[list[Any]]:
        """CSV rows: the baseline, then per round its patches with the outputs after the round."""
        xy = self.coords if xy is None else xy
        base, t = self.baseline, self.target
        rows = [[name, 0, -1, -1, -1, *base, 0.0]]
        for r, (out, idx) in enumerate(zip(outputs, moved, strict=True), start=1):
            rows += [[name, r, int(i), int(xy[i, 0]), int(xy[i, 1]), *out, out[t] - base[t]]
                     for i in np.asarray(idx, dtype=np.int64) - offset]
        return [[*row, seed] for row in rows] if seed is not None else rows

    def flip(self, outputs: np.ndarray) -> int | None:
        """First round (1-based) whose prediction differs from the baseline's (or crosses ``threshold``)."""
        threshold = self.spec.threshold
        if threshold is not None:
            hits = np.flatnonzero((outputs[:, self.target] >= threshold) != (self.baseline[self.target] >= threshold))
        elif self.task == "classification":
            hits = np.flatnonzero(np.argmax(outputs, axis=1) != np.argmax(self.baseline))
        else:
            return None
        return int(hits[0]) + 1 if hits.size else None

    def attention(self, features: np.ndarray, offset: int) -> np.ndarray | None:
        """Raw attention scores ``[n]`` of ``features`` (pool rows ``offset..``), None if the model gives none."""
        if isinstance(self.engine, ExactEngine):
            return self.engine.scores[offset:offset + len(features)].copy()
        with torch.no_grad():
            out = self.mil.model(torch.as_tensor(features, device=self.mil.device)[None])
        return out["attention"][0].double().cpu().numpy() if isinstance(out, dict) and "attention" in out else None

    def single(self, name: str) -> tuple[list, dict]:
        cand = np.arange(self.n)
        if name == "single_removal":
            if self.n < 2:
                raise DataError("removing its only patch would leave the bag empty", self.where)
            outputs = self.engine.outputs_after_removal(self.full, cand)
        else:
            outputs = self.engine.outputs_after_addition(np.zeros_like(self.full), cand)
        flips = int((np.argmax(outputs, axis=1) != np.argmax(self.baseline)).sum()) \
            if self.task == "classification" else None
        rows = self.rows(name, outputs, [[j] for j in range(self.n)])
        for row in rows[1:]:
            row[1] = 1  # every candidate is its own bag of round 1
        return rows, {"n_flips": flips, "flip_round": None}

    def removal_curve(self, name: str) -> tuple[list, dict]:
        counts = _counts(self.n, self.spec.percentages)
        extra: dict[str, Any] = {"percentages": [100.0 * c / self.n for c in counts], "counts": counts}
        if name == "ranked_removal":
            attention = self.attention(self.bag.features, 0)
            if attention is None:
                raise ConfigError("ranked_removal needs a model that returns attention scores")
            order = np.argsort(-attention, kind="stable")
            outputs, moved = self.engine.outputs_for_prefixes(self.full, order, counts, False)
            return self.rows(name, outputs, moved), {**extra, "flip_round": self.flip(outputs)}
        rows, flips = [], {}
        for seed in self.spec.random_seeds:
            order = np.random.default_rng(seed).permutation(self.n)
            outputs, moved = self.engine.outputs_for_prefixes(self.full, order, counts, False)
            rows += self.rows(name, outputs, moved, seed=seed)
            flips[str(seed)] = self.flip(outputs)
        return rows, {**extra, "flip_round": flips}

    def greedy(self, name: str) -> tuple[list, dict]:
        spec, necessity = self.spec, name == "greedy_necessity"
        objective = spec.necessity_objective if necessity else spec.sufficiency_objective
        result = greedy_search(self.engine, self.target, "necessity" if necessity else "sufficiency", objective,
                               spec.per_round, spec.max_rounds, spec.max_fraction, spec.threshold,
                               spec.stop_on_flip, np.arange(self.n), self.baseline)
        flip = result.flip_round if spec.threshold is None else result.threshold_round
        return self.rows(name, result.outputs[1:], result.moved), {
            "flip_round": flip, "stopped": result.stopped, "objective": objective, "per_round": spec.per_round}

    def region_experiment(self, name: str) -> tuple[list, dict]:
        region = self.region
        inside = patches_in_region(self.coords, self.size0, region, self.spec.region_min_inside)
        if not inside.any():
            raise DataError(f"no patch of the bag lies inside the region (at least "
                            f"{self.spec.region_min_inside:.0%} of its area)", region.source or self.where)
        if name == "region_remove" and inside.all():
            raise DataError("every patch lies inside the region: removing it would leave an empty bag",
                            region.source or self.where)
        kept = self.full.copy()
        kept[:self.n] = ~inside if name == "region_remove" else inside
        outputs = self.engine.outputs_for_sets(kept[None])
        return self.rows(name, outputs, [np.flatnonzero(inside)]), {
            "flip_round": self.flip(outputs), "n_region_patches": int(inside.sum()), "region": region.source}

    def transplant(self, name: str) -> tuple[list, dict]:
        donor, spec = self.spec.donor, self.spec
        if spec.donor_patches is not None:
            order = check_indices(spec.donor_patches, len(donor.features), "donor patch index")
        else:
            scores = self.attention(donor.features, self.n)
            order = np.arange(len(donor.features)) if scores is None else np.argsort(-scores, kind="stable")
        counts = spec.transplant_counts or [c for c in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
                                             if c < len(order)] + [len(order)]
        counts = sorted({min(len(order), max(1, int(c))) for c in counts})
        outputs, moved = self.engine.outputs_for_prefixes(self.full, self.n + order, counts, True)
        rows = self.rows(name, outputs, moved, xy=np.asarray(donor.coords, dtype=np.int64), offset=self.n)
        return rows, {"flip_round": self.flip(outputs), "counts": counts,
                      "donor": str(donor.path or donor.attrs.get("slide_id") or "donor")}


_METHODS = {"single_removal": _Run.single, "single_patch": _Run.single, "ranked_removal": _Run.removal_curve,
            "random_removal": _Run.removal_curve, "greedy_necessity": _Run.greedy,
            "greedy_sufficiency": _Run.greedy, "region_remove": _Run.region_experiment,
            "region_keep": _Run.region_experiment, "transplant": _Run.transplant}


def explain_bag(mil: MilModel, bag: Bag, out_dir: str | Path, spec: CounterfactualSpec | None = None) -> \
        CounterfactualSummary:
    """Run the counterfactual experiments of ``spec`` on ``bag`` (features ``[N, D]``, coords ``[N, 2]``
    level-0 (x, y)); write one CSV per experiment and summary.json under ``out_dir/counterfactuals/``.

    Every input is checked (region, donor, indices, engine) before the first experiment runs; each CSV is
    written atomically as soon as its experiment finishes.
    """
    spec = spec or CounterfactualSpec()
    if len(bag.features) == 0:
        raise DataError("the bag has no patches", bag.path or bag.attrs.get("slide_id") or "bag")
    requested = list(spec.experiments) if spec.experiments is not None else \
        [*EXPERIMENTS[:6], *(EXPERIMENTS[6:8] if spec.region is not None else ()),
         *(("transplant",) if spec.donor is not None else ())]
    for name in requested:
        if name not in EXPERIMENTS:
            raise ConfigError(f"unknown counterfactual experiment '{name}' (choose from {', '.join(EXPERIMENTS)})")
    if {"region_remove", "region_keep"} & set(requested) and spec.region is None:
        raise ConfigError("region experiments need a region (a mask image or GeoJSON)")
    if "transplant" in requested and spec.donor is None:
        raise ConfigError("the transplant experiment needs a donor bag")
    t0 = time.perf_counter()
    run = _Run(mil, bag, spec, requested)
    timings = {"engine_setup": time.perf_counter() - t0}
    folder = Path(out_dir) / "counterfactuals"
    info: dict[str, dict[str, Any]] = {}
    for name in requested:
        t1 = time.perf_counter()
        rows, extra = _METHODS[name](run, name)
        _write_csv(folder / f"{name}.csv", run.names, rows, seed=name == "random_removal")
        timings[name] = time.perf_counter() - t1
        info[name] = {"csv": f"{name}.csv", "acts_on": ACTS_ON[name], **extra}
    names, baseline = run.names, run.baseline
    summary = CounterfactualSummary(
        slide_id=str(bag.attrs.get("slide_id") or (bag.path.stem if bag.path else "bag")), n_patches=run.n,
        output_names=names, baseline={k: float(v) for k, v in zip(names, baseline, strict=True)},
        prediction=mil.classes[int(np.argmax(baseline))] if run.task == "classification" and mil.classes else None,
        target=names[run.target], engine=run.engine.name, timings=timings, experiments=info, folder=folder)
    atomic_write_json(folder / "summary.json", {**summary.to_dict(), "engine_requested": spec.engine,
                                                "target_index": run.target})
    return summary


def _write_csv(path: Path, names: list[str], rows: list[list[Any]], seed: bool) -> None:
    header = ["experiment", "round", "patch_index", "x", "y", *names, "delta"] + (["seed"] if seed else [])
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow([f"{v:.10g}" if isinstance(v, float) else v for v in row])
