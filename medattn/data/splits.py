"""Patient-level, stratified k-fold cross-validation splits.

All slides of a patient stay together: a patient is in exactly one test fold, and never in both the
training and the validation/test part of a fold. Patients are stratified on their label (the
majority of their slides' labels, ties to the larger label; for survival the event indicator), so
every fold holds each class in about the same proportion. Everything is deterministic given the seed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medattn.errors import DataError
from medattn.io.atomic import atomic_write_json


def patient_labels(patient_ids: Sequence[str], labels: Sequence[int]) -> dict[str, int]:
    """Each patient's label: the most common label of its slides (ties → the larger label)."""
    votes: dict[str, Counter] = {}
    for p, y in zip(patient_ids, labels):
        votes.setdefault(p, Counter())[int(y)] += 1
    return {p: max(c.items(), key=lambda kv: (kv[1], kv[0]))[0] for p, c in votes.items()}


def _stratified_order(patients: list[str], plabel: dict[str, int], rng: np.random.Generator) -> list[str]:
    """Patients interleaved so that every prefix holds the classes in about their overall proportion.

    Within a class the order is a random permutation; patient ``i`` of a class of ``n`` gets the key
    ``(i + 0.5) / n`` and the patients are sorted by it.
    """
    keyed = []
    for c in sorted({plabel[p] for p in patients}):
        members = sorted(p for p in patients if plabel[p] == c)
        members = [members[j] for j in rng.permutation(len(members))]
        keyed += [((i + 0.5) / len(members), c, p) for i, p in enumerate(members)]
    return [p for _, _, p in sorted(keyed)]


def patient_kfold(patient_ids: Sequence[str], labels: Sequence[int], k: int,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` folds of ``(train_idx, test_idx)`` slide indices, split by patient and stratified on labels.

    Patients, class by class and shuffled within a class, are dealt to the folds round-robin, so each
    fold's count of a class differs from the others' by at most one patient, fold sizes differ by at
    most one patient, and every patient is tested exactly once.

    Raises:
        DataError: fewer patients than folds.
    """
    pids = [str(p) for p in patient_ids]
    plabel = patient_labels(pids, labels)
    patients = sorted(plabel)
    if len(patients) < k:
        raise DataError(f"{len(patients)} patients cannot make {k} folds (train.folds); need at least one "
                        "patient per fold")
    rng = np.random.default_rng([seed, 1])
    order: list[str] = []  # class by class, each class in random order: dealing continues across classes
    for c in sorted(set(plabel.values())):
        members = [p for p in patients if plabel[p] == c]
        order += [members[j] for j in rng.permutation(len(members))]
    fold_of = {p: i % k for i, p in enumerate(order)}
    slide_fold = np.array([fold_of[p] for p in pids])
    return [(np.flatnonzero(slide_fold != f), np.flatnonzero(slide_fold == f)) for f in range(k)]


def validation_split(train_idx: np.ndarray, patient_ids: Sequence[str], labels: Sequence[int],
                     val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Carve validation patients out of ``train_idx``: ``(train_idx, val_idx)``, stratified by patient.

    ``round(val_fraction × patients)`` patients (at least one when ``val_fraction > 0``, and at least
    one left for training) go to validation.
    """
    train_idx = np.asarray(train_idx)
    if val_fraction <= 0 or len(train_idx) == 0:
        return train_idx, train_idx[:0]
    pids = [str(patient_ids[i]) for i in train_idx]
    plabel = patient_labels(pids, [labels[i] for i in train_idx])
    patients = sorted(plabel)
    n_val = min(max(1, round(val_fraction * len(patients))), len(patients) - 1)
    if n_val <= 0:
        return train_idx, train_idx[:0]
    val_patients = set(_stratified_order(patients, plabel, np.random.default_rng([seed, 2]))[:n_val])
    is_val = np.array([p in val_patients for p in pids])
    return train_idx[~is_val], train_idx[is_val]


@dataclass(frozen=True)
class FoldSplit:
    """Slide indices of one cross-validation fold."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def cross_validation_splits(patient_ids: Sequence[str], labels: Sequence[int], k: int, val_fraction: float,
                            seed: int = 0) -> list[FoldSplit]:
    """:func:`patient_kfold` with a validation part carved out of every training part."""
    out = []
    for f, (train, test) in enumerate(patient_kfold(patient_ids, labels, k, seed)):
        tr, va = validation_split(train, patient_ids, labels, val_fraction, seed * 1000 + f)
        out.append(FoldSplit(f, tr, va, test))
    return out


def save_splits(path: str | Path, folds: list[FoldSplit], slide_ids: Sequence[str], seed: int) -> Path:
    """Write ``splits.json``: per fold the slide ids of train, val and test (atomically)."""
    atomic_write_json(path, {"seed": seed, "folds": [
        {"fold": s.fold, **{part: [slide_ids[i] for i in getattr(s, part)] for part in ("train", "val", "test")}}
        for s in folds]})
    return Path(path)


def load_splits(path: str | Path, slide_ids: Sequence[str]) -> list[FoldSplit]:
    """Read ``splits.json`` back into indices of ``slide_ids``.

    Raises:
        DataError: unreadable file, or slide ids that are not in the table (the table changed).
    """
    import json

    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
        index = {s: i for i, s in enumerate(slide_ids)}
        out = []
        for f in data["folds"]:
            parts = {}
            for part in ("train", "val", "test"):
                unknown = [s for s in f[part] if s not in index]
                if unknown:
                    raise DataError(f"slide {unknown[0]!r} of fold {f['fold']} is not in the slide table; the table "
                                    "changed since the run started (start a new run)", path)
                parts[part] = np.array([index[s] for s in f[part]], dtype=np.int64)
            out.append(FoldSplit(int(f["fold"]), parts["train"], parts["val"], parts["test"]))
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read the splits: {e}", path) from e
