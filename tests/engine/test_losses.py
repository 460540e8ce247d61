"""Dice + CE loss and deep supervision, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from medattn.engine.losses import DeepSupervisionLoss, DiceCELoss, downsample_labels

SMOOTH = 1e-5


def two_class_case():
    """Four voxels (1 x 2 x 2 image) with foreground probabilities p1 and labels t.

    Logits (0, log(p / (1 - p))) give softmax foreground probability exactly p.
    """
    p1 = torch.tensor([0.5, 0.75, 0.25, 0.8], dtype=torch.float64)
    t = torch.tensor([1, 1, 0, 0])
    logits = torch.stack([torch.zeros(4, dtype=torch.float64), torch.log(p1 / (1 - p1))]).reshape(1, 2, 2, 2)
    return logits, t.reshape(1, 1, 2, 2)


def test_cross_entropy_matches_the_hand_formula():
    logits, target = two_class_case()
    # probability of the true class: 0.5, 0.75, 1 - 0.25, 1 - 0.8
    expected = -(math.log(0.5) + math.log(0.75) + math.log(0.75) + math.log(0.2)) / 4
    loss = DiceCELoss(2)
    assert float(loss.ce_loss(logits, target)) == pytest.approx(expected, rel=1e-6)
    only_ce = DiceCELoss(2, dice_weight=0.0)
    assert float(only_ce(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_soft_dice_matches_the_hand_formula():
    logits, target = two_class_case()
    # foreground: sum(p * t) = 0.5 + 0.75, sum(p) = 2.3, sum(t) = 2
    dice_fg = (2 * 1.25 + SMOOTH) / (2.3 + 2 + SMOOTH)
    assert float(DiceCELoss(2).dice_loss(logits, target)) == pytest.approx(1 - dice_fg, rel=1e-6)
    # background: p0 = 0.5, 0.25, 0.75, 0.2; t0 = 0, 0, 1, 1 -> sum(p0 t0) = 0.95, sum(p0) = 1.7
    dice_bg = (2 * 0.95 + SMOOTH) / (1.7 + 2 + SMOOTH)
    with_bg = DiceCELoss(2, include_background=True)
    assert float(with_bg.dice_loss(logits, target)) == pytest.approx(1 - (dice_bg + dice_fg) / 2, rel=1e-6)


def test_weights_combine_the_two_terms():
    logits, target = two_class_case()
    ce = -(math.log(0.5) + 2 * math.log(0.75) + math.log(0.2)) / 4
    dice = 1 - (2.5 + SMOOTH) / (4.3 + SMOOTH)
    loss = DiceCELoss(2, dice_weight=2.0, ce_weight=0.5)(logits, target)
    assert loss.dim() == 0
    assert float(loss) == pytest.approx(2.0 * dice + 0.5 * ce, rel=1e-6)


def test_batch_dice_pools_samples_before_the_ratio():
    # sample 0: prediction p = (1, 0) on target (1, 0); sample 1: p = (0.5, 0.5) on target (0, 0)
    p = torch.tensor([[1 - 1e-12, 1e-12], [0.5, 0.5]], dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1).reshape(2, 2, 1, 2)
    target = torch.tensor([[1, 0], [0, 0]]).reshape(2, 1, 1, 2)
    per_sample = [(2 * 1.0 + SMOOTH) / (1.0 + 1 + SMOOTH), (0 + SMOOTH) / (1.0 + 0 + SMOOTH)]
    pooled = (2 * 1.0 + SMOOTH) / (2.0 + 1 + SMOOTH)
    assert float(DiceCELoss(2).dice_loss(logits, target)) == pytest.approx(1 - sum(per_sample) / 2, abs=1e-9)
    assert float(DiceCELoss(2, batch_dice=True).dice_loss(logits, target)) == pytest.approx(1 - pooled, abs=1e-9)


def test_perfect_prediction_gives_zero_loss():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 6, 5, 4))
    logits = 50.0 * torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    loss = DiceCELoss(3)
    assert float(loss.ce_loss(logits, target)) < 1e-12
    assert float(loss.dice_loss(logits, target)) < 1e-6
    assert float(loss(logits, target)) < 1e-6
    # a class absent from target and prediction counts as perfect (dice 1), not as 0
    absent = DiceCELoss(4)
    logits4 = torch.cat([logits, torch.full_like(logits[:, :1], -50.0)], dim=1)
    assert float(absent.dice_loss(logits4, target)) < 1e-6


def test_gradients_flow_and_are_finite():
    logits = torch.randn(2, 3, 5, 4, 3, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 5, 4, 3))
    DiceCELoss(3)(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_bad_targets_are_rejected():
    loss = DiceCELoss(2)
    logits = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"target must be \(B, 1, \*spatial\)"):
        loss(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.1, got values 0\.\.2"):
        loss(logits, torch.tensor([0, 1, 2, 0] * 4).reshape(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"logits must be \(B, 2, \*spatial\)"):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        DiceCELoss(1)


def test_downsample_labels_picks_every_stride_th_voxel():
    target = torch.arange(9 * 5).reshape(1, 1, 9, 5)
    sub = downsample_labels(target, 4)
    # rows 0, 4, 8 and columns 0, 4: exact label values, no interpolation
    assert sub.tolist() == [[[[0, 4], [20, 24], [40, 44]]]]
    assert downsample_labels(target, 1) is target
    labels = torch.tensor([0, 3, 3, 0, 0, 3, 3]).reshape(1, 1, 7)
    assert set(downsample_labels(labels, 2).unique().tolist()) <= {0, 3}


def test_deep_supervision_weights_and_targets():
    torch.manual_seed(0)
    target = torch.randint(0, 2, (2, 1, 9, 7, 5))
    outs = [torch.randn(2, 2, 9, 7, 5), torch.randn(2, 2, 5, 4, 3), torch.randn(2, 2, 3, 2, 2)]
    base = DiceCELoss(2)
    terms = [float(base(outs[0], target)), float(base(outs[1], target[:, :, ::2, ::2, ::2])),
             float(base(outs[2], target[:, :, ::4, ::4, ::4]))]
    # default weights 1, 1/2, 1/4 normalised to 4/7, 2/7, 1/7
    ds = DeepSupervisionLoss(base)
    assert ds.normalised_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert float(ds(outs, target)) == pytest.approx(4 / 7 * terms[0] + 2 / 7 * terms[1] + 1 / 7 * terms[2],
                                                    rel=1e-6)
    custom = DeepSupervisionLoss(base, weights=[2, 1, 0])
    assert float(custom(outs, target)) == pytest.approx((2 * terms[0] + terms[1]) / 3, rel=1e-6)
    # a plain tensor is just the base loss
    assert float(ds(outs[0], target)) == pytest.approx(terms[0], rel=1e-6)


def test_deep_supervision_rejects_mismatches():
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    ds = DeepSupervisionLoss(DiceCELoss(2))
    with pytest.raises(ValueError, match=r"output 1 has spatial shape \(3, 4\), expected \(4, 4\)"):
        ds([torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 3, 4)], target)
    with pytest.raises(ValueError, match="2 deep-supervision weights for 3 outputs"):
        DeepSupervisionLoss(DiceCELoss(2), weights=[1, 1])([torch.zeros(1, 2, 8, 8)] * 3, target)
    with pytest.raises(ValueError, match="positive sum"):
        DeepSupervisionLoss(DiceCELoss(2), weights=[0, 0])
