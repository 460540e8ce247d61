"""Task heads: probabilities, Cox risk, discrete-time risk (hand-computed) and output names."""

from __future__ import annotations

import math

import pytest
import torch

from medattn.models.mil_heads import n_outputs_for, output_names, outputs_from_logits, survival_curve


def test_classification_probabilities() -> None:
    p = outputs_from_logits(torch.tensor([[0.0, math.log(3.0)]]), "classification")
    assert p[0].tolist() == pytest.approx([0.25, 0.75])


def test_cox_risk_is_the_logit() -> None:
    r = outputs_from_logits(torch.tensor([[2.5], [-1.0]]), "survival", "cox")
    assert r.shape == (2, 1) and r[:, 0].tolist() == [2.5, -1.0]


def test_nll_risk_is_minus_expected_survival() -> None:
    # hazards 0.5, 0.5 → S = [0.5, 0.25] → risk = -0.75; hazards 0.5, sigmoid(ln 3) = 0.75 → S = [0.5, 0.125]
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    assert survival_curve(logits)[1].tolist() == pytest.approx([0.5, 0.125])
    r = outputs_from_logits(logits, "survival", "nll")
    assert r[:, 0].tolist() == pytest.approx([-0.75, -0.625])
    assert r[1] > r[0]  # higher hazard → higher risk


def test_names_and_sizes() -> None:
    assert output_names("classification", ["normal", "tumour"]) == ["p_normal", "p_tumour"]
    assert output_names("survival", []) == ["risk"]
    assert n_outputs_for("classification", 3) == 3
    assert n_outputs_for("survival", survival_loss="cox") == 1
    assert n_outputs_for("survival", survival_loss="nll", n_bins=5) == 5
    with pytest.raises(ValueError, match="task"):
        output_names("regression", [])
    with pytest.raises(ValueError, match="survival_loss"):
        outputs_from_logits(torch.zeros(1, 2), "survival", "aft")
