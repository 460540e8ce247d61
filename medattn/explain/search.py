"""Greedy counterfactual search (HIPPO's necessity and sufficiency searches) on any engine.

Necessity (``greedy_necessity``): start from the whole bag; each round evaluate the bag minus each
remaining patch and remove the K patches whose removal most lowers (``decrease``), most raises
(``increase``) or least changes (``least``) the target output. The patches removed first are the
ones the prediction most depends on.

Sufficiency (``greedy_sufficiency``): start from an empty bag; each round add the K patches whose
addition most raises (or lowers, or least changes) the target: the smallest set of patches that
reproduces the prediction.

A search stops after ``max_rounds`` rounds, once ``max_fraction`` of the patches were moved, when the
target output crosses ``threshold`` (from the side the search started on), when the predicted class
flips (``stop_on_flip``, classification), or when no patch is left to move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from medattn.errors import ConfigError, DataError
from medattn.explain.engines import Engine, check_indices

Objective = Literal["decrease", "increase", "least"]
OBJECTIVES = ("decrease", "increase", "least")


@dataclass
class SearchResult:
    """The rounds of a greedy search.

    Attributes:
        moved: per round r = 1..R, the pool indices removed (necessity) or added (sufficiency) ``[K]``.
        outputs: ``[R + 1, K_out]`` float64; row 0 is the starting bag (the whole bag for necessity;
            NaN for sufficiency, whose empty start has no output), row r the bag after round r.
        stopped: why it stopped: ``rounds``, ``fraction``, ``threshold``, ``flip`` or ``exhausted``.
        flip_round: necessity: the first round whose predicted class (argmax) differs from
            ``reference``'s; sufficiency: the first round whose class equals it (the bag suffices); or None.
        threshold_round: likewise, the first round whose target output is on the other side of
            ``threshold`` than ``reference``'s (necessity) or on the same side (sufficiency), or None.
    """

    moved: list[np.ndarray] = field(default_factory=list)
    outputs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    stopped: str = ""
    flip_round: int | None = None
    threshold_round: int | None = None

    @property
    def order(self) -> np.ndarray:
        """All moved pool indices in the order they were moved ``[sum K]``."""
        return np.concatenate(self.moved) if self.moved else np.zeros(0, dtype=np.int64)


def _pick(values: np.ndarray, baseline: float, objective: str, k: int) -> np.ndarray:
    """Positions of the k best candidates (ties: the lower position first)."""
    key = {"decrease": values, "increase": -values, "least": np.abs(values - baseline)}[objective]
    return np.argmin(key)[None] if k == 1 else np.argsort(key, kind="stable")[:k]


def greedy_search(engine: Engine, target: int, mode: Literal["necessity", "sufficiency"] = "necessity",
                  objective: Objective | None = None, per_round: int = 1, max_rounds: int | None = None,
                  max_fraction: float | None = None, threshold: float | None = None,
                  stop_on_flip: bool = False, patches: np.ndarray | None = None,
                  reference: np.ndarray | None = None) -> SearchResult:
    """Greedy necessity or sufficiency search over ``patches`` (pool indices; default the whole pool).

    Args:
        engine: any :class:`~medattn.explain.engines.Engine` (the result does not depend on which).
        target: index of the output the search acts on.
        objective: ``decrease`` / ``increase`` / ``least`` change of the target per round; default
            ``decrease`` for necessity and ``increase`` for sufficiency.
        per_round: K, patches moved per round (the K best of the round's single-patch candidates).
        max_rounds, max_fraction: stop after this many rounds / once this fraction of ``patches`` moved.
        threshold: necessity: stop once the target output is on the other side of this value than
            ``reference``'s; sufficiency: once it is on the same side (the bag reproduces the prediction).
        stop_on_flip: necessity: stop once the predicted class (argmax) differs from ``reference``'s;
            sufficiency: once it equals it.
        reference: outputs ``[K_out]`` the threshold and flips are judged against (default: the whole
            bag's outputs, i.e. the slide's prediction).
    """
    if mode not in ("necessity", "sufficiency"):
        raise ConfigError(f"unknown search mode '{mode}' (choose necessity or sufficiency)")
    objective = objective or ("decrease" if mode == "necessity" else "increase")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown search objective '{objective}' (choose from {', '.join(OBJECTIVES)})")
    if per_round < 1:
        raise ConfigError(f"per_round must be >= 1, got {per_round}")
    if max_fraction is not None and not 0.0 < max_fraction <= 1.0:
        raise ConfigError(f"max_fraction must be in (0, 1], got {max_fraction}")
    if max_rounds is not None and max_rounds < 1:
        raise ConfigError(f"max_rounds must be >= 1, got {max_rounds}")
    if not 0 <= target < engine.n_outputs:
        raise ConfigError(f"target output {target} is out of range (the model has {engine.n_outputs} outputs)")
    patches = (np.arange(engine.n_pool) if patches is None
               else np.unique(check_indices(patches, engine.n_pool)))
    if len(patches) == 0:
        raise DataError("the search has no patches to work on")
    available = np.zeros(engine.n_pool, dtype=bool)
    available[patches] = True
    current = available.copy() if mode == "necessity" else np.zeros(engine.n_pool, dtype=bool)
    start = engine.outputs_for_sets(available[None])[0]
    reference = start if reference is None else np.asarray(reference, dtype=np.float64)
    ref_class, ref_target = int(np.argmax(reference)), float(reference[target])
    necessity = mode == "necessity"
    natural = len(patches) - 1 if necessity else len(patches)  # necessity keeps one patch
    budget = natural if max_fraction is None else min(natural, max(1, round(max_fraction * len(patches))))
    result = SearchResult(outputs=np.empty((0, len(start))))
    rows = [start if necessity else np.full_like(start, np.nan)]
    moved_total, current_value, stopped = 0, float(start[target]), ""
    while not stopped:
        if max_rounds is not None and len(result.moved) >= max_rounds:
            stopped = "rounds"
            break
        if moved_total >= budget:
            stopped = "exhausted" if budget == natural else "fraction"
            break
        k = min(per_round, budget - moved_total)
        pool = np.flatnonzero(current if necessity else available & ~current)
        values = (engine.outputs_after_removal(current, pool) if necessity
                  else engine.outputs_after_addition(current, pool))
        best = _pick(values[:, target], current_value, objective, k)
        chosen = pool[best]
        current[chosen] = not necessity
        outputs = values[best[0]] if k == 1 else engine.outputs_for_sets(current[None])[0]
        result.moved.append(chosen)
        rows.append(outputs)
        moved_total += k
        current_value = float(outputs[target])
        r = len(result.moved)
        # necessity: the prediction leaves the reference; sufficiency: the bag reaches it
        if result.flip_round is None and (int(np.argmax(outputs)) == ref_class) != necessity:
            result.flip_round = r
        if result.threshold_round is None and threshold is not None and \
                ((current_value >= threshold) == (ref_target >= threshold)) != necessity:
            result.threshold_round = r
        if threshold is not None and result.threshold_round is not None:
            stopped = "threshold"
        elif stop_on_flip and result.flip_round is not None:
            stopped = "flip"
    result.outputs = np.stack(rows)
    result.stopped = stopped
    return result
