"""Slide-level metrics: hand-computed cases and agreement with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from medattn.evaluate.mil_metrics import (
    average_ranks,
    balanced_accuracy,
    classification_metrics,
    concordance_index,
    f1_score,
    mean_std,
    roc_auc,
    survival_metrics,
)


def test_auc_hand_computed() -> None:
    assert roc_auc([0, 0, 1, 1], np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc([0, 1], np.array([0.5, 0.5])) == pytest.approx(0.5)  # a tie counts half
    assert roc_auc([0, 1, 1], np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])) == pytest.approx(1.0)
    assert math.isnan(roc_auc([1, 1, 1], np.array([0.2, 0.3, 0.4])))
    three = np.full((4, 3), 1 / 3)
    assert math.isnan(roc_auc([0, 1, 1, 0], three))  # class 2 absent


def test_average_ranks() -> None:
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auc_agrees_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounded: many ties
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    y3 = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3)) + np.eye(3)[y3]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert roc_auc(y3, p) == pytest.approx(skm.roc_auc_score(y3, p, multi_class="ovr", average="macro"),
                                           abs=1e-12)


def test_balanced_accuracy_and_f1() -> None:
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    assert f1_score([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert f1_score([0, 0], [0, 0]) == 0.0  # no positives predicted or present
    # macro over 3 classes: class 0 F1 = 1, class 1: tp 1 fp 1 fn 0 → 2/3, class 2: tp 0 → 0
    assert f1_score([0, 1, 2], [0, 1, 1], n_classes=3) == pytest.approx((1 + 2 / 3 + 0) / 3)
    rng = np.random.default_rng(1)
    for n_classes in (2, 4):
        y, pred = rng.integers(0, n_classes, 100), rng.integers(0, n_classes, 100)
        avg = "binary" if n_classes == 2 else "macro"
        assert f1_score(y, pred, n_classes) == pytest.approx(skm.f1_score(y, pred, average=avg), abs=1e-12)
        assert balanced_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)


def test_classification_metrics() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    m = classification_metrics([0, 0, 1, 1], probs)
    assert m["accuracy"] == pytest.approx(0.5) and m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(skm.roc_auc_score([0, 0, 1, 1], probs[:, 1]))
    assert m["f1"] == pytest.approx(0.5)


def test_concordance_index_hand_computed() -> None:
    t, e = [1, 2, 3], [1, 1, 0]
    assert concordance_index(t, e, [3, 2, 1]) == 1.0
    assert concordance_index(t, e, [1, 2, 3]) == 0.0
    assert concordance_index(t, e, [1, 1, 1]) == 0.5
    # comparable: (0,1) (0,2) (0,3) (2,3); only (2,3) discordant → 3/4
    assert concordance_index([1, 2, 3, 4], [1, 0, 1, 0], [0.9, 0.5, 0.05, 0.1]) == pytest.approx(0.75)
    # tied times are not comparable; censored-first pairs are not comparable
    # (0, 1) tie in time → not comparable; (0, 2) discordant, (1, 2) concordant → 1/2
    assert concordance_index([1, 1, 2], [1, 1, 0], [0.1, 0.9, 0.5]) == pytest.approx(0.5)
    # censored first: (1, 0) is not comparable, only (0, 2) → concordant
    assert concordance_index([2, 1, 3], [1, 0, 0], [0.9, 0.1, 0.5]) == 1.0
    assert math.isnan(concordance_index([1, 1], [1, 1], [0.1, 0.2]))
    assert survival_metrics([1, 2], [1, 0], [2.0, 1.0]) == {"c_index": 1.0}


def test_mean_std_ignores_nan() -> None:
    out = mean_std([{"auc": 1.0, "f1": math.nan}, {"auc": 3.0, "f1": 2.0}, {"auc": 2.0, "f1": math.nan}])
    assert out["auc"] == pytest.approx((2.0, 1.0))
    assert out["f1"] == (2.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([{"x": math.nan}])["x"])
