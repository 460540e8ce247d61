"""MIL losses against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medattn.engine.mil_losses import (
    attention_entropy,
    class_weights,
    cox_loss,
    nll_survival_loss,
    survival_bin_edges,
    time_to_bin,
    with_attention_entropy,
)

LN2 = math.log(2.0)


def test_cox_loss_hand_computed() -> None:
    risk = torch.tensor([0.0, math.log(2.0), math.log(3.0)])
    # event 0: risk set {0,1,2} → -(0 - ln 6); event 1: {1,2} → -(ln 2 - ln 5); mean = ln(15) / 2
    loss = cox_loss(risk, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 0]))
    assert loss.item() == pytest.approx(math.log(15.0) / 2, rel=1e-6)


def test_cox_loss_breslow_ties() -> None:
    risk = torch.tensor([0.0, math.log(2.0), math.log(3.0)])
    # tied events at t=1 share the risk set {0,1,2}: (ln 6 + ln 6 - ln 2) / 2 = ln(18) / 2
    loss = cox_loss(risk, torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1, 1, 0]))
    assert loss.item() == pytest.approx(math.log(18.0) / 2, rel=1e-6)


def test_cox_loss_without_events_is_zero_with_grad() -> None:
    risk = torch.tensor([0.3, -0.2], requires_grad=True)
    loss = cox_loss(risk, torch.tensor([1.0, 2.0]), torch.tensor([0, 0]))
    assert loss.item() == 0.0
    loss.backward()
    assert risk.grad is not None and risk.grad.tolist() == [0.0, 0.0]


def test_nll_survival_loss_hand_computed() -> None:
    logits = torch.zeros(4, 2)  # all hazards 0.5
    bins = torch.tensor([0, 1, 0, 1])
    event = torch.tensor([1, 1, 0, 0])
    # event in bin 0: -ln h0 = ln2; event in bin 1: -ln S0 - ln h1 = 2 ln2;
    # censored in bin 0: -ln S0 = ln2; censored in bin 1: -ln S1 = 2 ln2
    assert nll_survival_loss(logits, bins, event).item() == pytest.approx(1.5 * LN2, rel=1e-6)
    # alpha = 0.5: 0.5 * mean(all) + 0.5 * mean(uncensored parts [ln2, 2 ln2, 0, 0])
    assert nll_survival_loss(logits, bins, event, alpha=0.5).item() == pytest.approx(1.125 * LN2, rel=1e-6)
    logits = torch.tensor([[math.log(3.0), 0.0]])  # h0 = 0.75: event in bin 0 → -ln 0.75
    assert nll_survival_loss(logits, torch.tensor([0]), torch.tensor([1])).item() == pytest.approx(-math.log(0.75))


def test_nll_survival_loss_is_stable_for_large_logits() -> None:
    logits = torch.tensor([[80.0, -80.0, 30.0]], requires_grad=True)
    loss = nll_survival_loss(logits, torch.tensor([2]), torch.tensor([1]))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logits.grad).all()


def test_bin_edges_from_uncensored_quantiles() -> None:
    times = np.arange(1.0, 9.0)
    events = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # uncensored: 2, 4, 6, 8 → quantiles 2, 5, 8
    edges = survival_bin_edges(times, events, 2)
    assert edges.tolist() == [1.0, 5.0, 8.0]  # first edge widened to the smallest time
    assert time_to_bin(np.array([1.0, 4.9, 5.0, 8.0, 100.0, 0.0]), edges).tolist() == [0, 0, 1, 1, 1, 0]
    assert survival_bin_edges(times, np.zeros(8), 4).tolist() == pytest.approx([1.0, 2.75, 4.5, 6.25, 8.0])


def test_attention_entropy_hand_computed() -> None:
    assert attention_entropy(torch.zeros(1, 4), normalize=False).item() == pytest.approx(math.log(4))
    assert attention_entropy(torch.zeros(1, 4)).item() == pytest.approx(1.0)
    scores = torch.tensor([[0.0, math.log(3.0), float("-inf")]])
    mask = torch.tensor([[True, True, False]])
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert attention_entropy(scores, mask, normalize=False).item() == pytest.approx(expected)
    assert attention_entropy(scores, mask).item() == pytest.approx(expected / LN2)
    assert attention_entropy(torch.tensor([[5.0]])).item() == 0.0  # one patch


def test_attention_entropy_gradient_is_finite_with_padding() -> None:
    scores = torch.tensor([[0.5, -1.0, 2.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False]])
    loss = with_attention_entropy(torch.tensor(1.0), scores, mask, lam=0.5)
    loss.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0, 3].item() == 0.0
    h = attention_entropy(scores.detach(), mask).item()
    assert loss.item() == pytest.approx(1.0 - 0.5 * h)
    assert with_attention_entropy(torch.tensor(2.0), scores, mask, lam=0.0).item() == 2.0


def test_class_weights_inverse_frequency() -> None:
    w = class_weights([0, 0, 0, 1], 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    assert class_weights([0, 1, 0, 1], 3).tolist() == pytest.approx([4 / 6, 4 / 6, 0.0])
    with pytest.raises(ValueError, match="labels"):
        class_weights([0, 2], 2)
