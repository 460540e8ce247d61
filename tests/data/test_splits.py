"""Patient-level stratified k-fold splits: no patient in two test folds, nor in train and val/test of a fold."""

from __future__ import annotations

import numpy as np
import pytest

from medattn.data.splits import (
    cross_validation_splits,
    load_splits,
    patient_kfold,
    patient_labels,
    save_splits,
    validation_split,
)
from medattn.errors import DataError


def _cohort(n_patients: int = 40, seed: int = 0) -> tuple[list[str], list[int]]:
    """1–3 slides per patient, ~30 % positive patients (all their slides share the label)."""
    rng = np.random.default_rng(seed)
    pids, labels = [], []
    for p in range(n_patients):
        y = int(rng.random() < 0.3)
        for _ in range(rng.integers(1, 4)):
            pids.append(f"P{p:03d}")
            labels.append(y)
    return pids, labels


def test_patient_label_is_the_majority_with_ties_to_the_larger_label():
    assert patient_labels(["a", "a", "a", "b", "b"], [0, 1, 1, 0, 1]) == {"a": 1, "b": 1}
    assert patient_labels(["a", "a", "a"], [2, 0, 0]) == {"a": 0}


@pytest.mark.parametrize("k", [2, 5])
def test_every_patient_is_tested_exactly_once_and_never_trained_on_in_its_fold(k):
    pids, labels = _cohort()
    folds = patient_kfold(pids, labels, k, seed=3)
    assert len(folds) == k
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(len(pids)))  # every slide tested once
    test_patients = [{pids[i] for i in test} for _, test in folds]
    for a in range(k):
        train, test = folds[a]
        assert set(train.tolist()) | set(test.tolist()) == set(range(len(pids)))
        assert not {pids[i] for i in train} & test_patients[a]
        for b in range(a + 1, k):
            assert not test_patients[a] & test_patients[b]


def test_class_balance_and_fold_sizes_differ_by_at_most_one_patient():
    pids, labels = _cohort(53, seed=1)
    plab = patient_labels(pids, labels)
    folds = patient_kfold(pids, labels, 5, seed=0)
    per_fold = [[plab[p] for p in {pids[i] for i in test}] for _, test in folds]
    positives = [sum(f) for f in per_fold]
    sizes = [len(f) for f in per_fold]
    assert max(positives) - min(positives) <= 1 and max(sizes) - min(sizes) <= 1
    assert sum(sizes) == 53


def test_splits_are_deterministic_by_seed():
    pids, labels = _cohort()
    a, b, c = (patient_kfold(pids, labels, 4, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_validation_patients_are_carved_out_of_training_stratified():
    pids, labels = _cohort(60, seed=2)
    for split in cross_validation_splits(pids, labels, 3, val_fraction=0.25, seed=0):
        train_p, val_p, test_p = ({pids[i] for i in part} for part in (split.train, split.val, split.test))
        assert not train_p & val_p and not train_p & test_p and not val_p & test_p
        n = len(train_p) + len(val_p)
        assert len(val_p) == round(0.25 * n)
        plab = patient_labels(pids, labels)
        val_pos = sum(plab[p] for p in val_p) / len(val_p)
        all_pos = sum(plab[p] for p in train_p | val_p) / n
        assert abs(val_pos - all_pos) < 0.1
    train, val = validation_split(np.arange(4), ["a", "a", "b", "c"], [0, 0, 1, 0], 0.0)
    assert len(val) == 0 and train.tolist() == [0, 1, 2, 3]


def test_too_few_patients_is_an_error():
    with pytest.raises(DataError, match="3 patients cannot make 5 folds"):
        patient_kfold(["a", "b", "c", "c"], [0, 1, 0, 0], 5)


def test_splits_json_round_trip_and_a_changed_table(tmp_path):
    pids, labels = _cohort(20)
    ids = [f"s{i}" for i in range(len(pids))]
    folds = cross_validation_splits(pids, labels, 4, 0.2, seed=1)
    save_splits(tmp_path / "splits.json", folds, ids, seed=1)
    back = load_splits(tmp_path / "splits.json", ids)
    for f, g in zip(folds, back):
        for part in ("train", "val", "test"):
            assert np.array_equal(getattr(f, part), getattr(g, part))
    with pytest.raises(DataError, match="is not in the slide table; the table changed"):
        load_splits(tmp_path / "splits.json", ids[:-3])
