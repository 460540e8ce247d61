"""Slide-level metrics: ROC AUC, balanced accuracy, F1, accuracy, Harrell's C-index, mean ± std.

Pure NumPy, defined as in scikit-learn (AUC, balanced accuracy, F1) and Harrell (1982) (C-index):

- ``roc_auc``: Mann–Whitney U with average ranks for ties; multiclass = macro one-vs-rest. NaN when
  a class is absent from ``y`` (the AUC is undefined).
- ``balanced_accuracy``: mean recall over the classes present in ``y``.
- ``f1_score``: binary (labels in {0, 1}, F1 of class 1) or macro over the classes in ``y`` ∪ ``pred``
  (``n_classes`` given: over 0..C−1); 0 where precision + recall is 0.
- ``concordance_index``: over comparable pairs (t_i < t_j and i had the event) the fraction with
  risk_i > risk_j, ties in risk counting 0.5; NaN without comparable pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N of ``x`` [N], tied values sharing their average rank (float64 [N])."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], xs.size]
    ranks_sorted = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y: Iterable[int], scores: np.ndarray) -> float:
    """Area under the ROC curve.

    Args:
        y: [N] int labels (binary 0/1, or 0..C−1).
        scores: [N] scores of class 1, or [N, C] per-class scores (C = 2: column 1 is used; C > 2: macro
            one-vs-rest over the C columns).

    Returns:
        the AUC, NaN when a class (of the binary pair, or of the C columns) has no sample.
    """
    y = np.asarray(list(y) if not isinstance(y, np.ndarray) else y).astype(np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]
    if s.ndim == 1:
        if y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError("roc_auc: 1-D scores need binary labels (0/1)")
        return _binary_auc(y == 1, s)
    if s.ndim != 2 or s.shape[0] != y.size:
        raise ValueError(f"roc_auc: scores of shape {s.shape} do not match {y.size} labels")
    aucs = [_binary_auc(y == c, s[:, c]) for c in range(s.shape[1])]
    return math.nan if any(math.isnan(a) for a in aucs) else float(np.mean(aucs))


def balanced_accuracy(y: Iterable[int], pred: Iterable[int]) -> float:
    """Mean per-class recall over the classes present in ``y`` (NaN for no samples)."""
    y, pred = np.asarray(y).reshape(-1), np.asarray(pred).reshape(-1)
    if y.size == 0:
        return math.nan
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def _f1(y: np.ndarray, pred: np.ndarray, c: int) -> float:
    tp = int(np.sum((pred == c) & (y == c)))
    fp = int(np.sum((pred == c) & (y != c)))
    fn = int(np.sum((pred != c) & (y == c)))
    return 0.0 if tp == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def f1_score(y: Iterable[int], pred: Iterable[int], n_classes: int | None = None) -> float:
    """F1: of class 1 when the labels are binary (``n_classes`` None or 2), else macro over classes."""
    y, pred = np.asarray(y).reshape(-1).astype(np.int64), np.asarray(pred).reshape(-1).astype(np.int64)
    if y.size == 0:
        return math.nan
    classes = list(range(n_classes)) if n_classes is not None else sorted(set(y.tolist()) | set(pred.tolist()))
    if (n_classes == 2) or (n_classes is None and set(classes) <= {0, 1}):
        return _f1(y, pred, 1)
    return float(np.mean([_f1(y, pred, c) for c in classes]))


def concordance_index(time: Iterable[float], event: Iterable[int], risk: Iterable[float]) -> float:
    """Harrell's C-index: higher risk should mean an earlier event.

    Pairs (i, j) are comparable when t_i < t_j and i had the event; a pair is concordant when
    risk_i > risk_j and counts 0.5 when the risks tie. NaN when no pair is comparable.
    """
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1).astype(bool)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    if not t.size == e.size == r.size:
        raise ValueError(f"concordance_index: lengths differ ({t.size}, {e.size}, {r.size})")
    comparable = (t[:, None] < t[None, :]) & e[:, None]
    n = int(comparable.sum())
    if n == 0:
        return math.nan
    score = (r[:, None] > r[None, :]).astype(np.float64) + 0.5 * (r[:, None] == r[None, :])
    return float((score * comparable).sum() / n)


def classification_metrics(y: Iterable[int], probs: np.ndarray) -> dict[str, float]:
    """``{auc, balanced_accuracy, f1, accuracy}`` from labels [N] and class probabilities [N, C]."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != y.size:
        raise ValueError(f"classification_metrics: probabilities of shape {probs.shape} for {y.size} labels")
    pred = probs.argmax(axis=1)
    n_classes = probs.shape[1]
    return {"auc": roc_auc(y, probs), "balanced_accuracy": balanced_accuracy(y, pred),
            "f1": f1_score(y, pred, n_classes), "accuracy": float(np.mean(pred == y)) if y.size else math.nan}


def survival_metrics(time: Iterable[float], event: Iterable[int], risk: Iterable[float]) -> dict[str, float]:
    """``{c_index}`` of predicted risks."""
    return {"c_index": concordance_index(time, event, risk)}


def mean_std(rows: Iterable[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Per metric, (mean, sample std with ddof=1) over the rows (e.g. folds × seeds), NaNs ignored.

    A metric with one finite value has std 0; with none, (NaN, NaN).
    """
    values: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            values.setdefault(k, []).append(float(v))
    out: dict[str, tuple[float, float]] = {}
    for k, vs in values.items():
        finite = np.asarray([v for v in vs if not math.isnan(v)])
        if finite.size == 0:
            out[k] = (math.nan, math.nan)
        else:
            out[k] = (float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0)
    return out
