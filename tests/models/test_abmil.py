"""GatedABMIL: shapes, exact masking of padded bags, single-patch bags, raw scores, hand-set weights."""

from __future__ import annotations

import math

import pytest
import torch

from medattn.errors import ConfigError
from medattn.models import create_model
from medattn.models.abmil import GatedABMIL, masked_softmax


def _model(gated: bool = True, **kw) -> GatedABMIL:
    torch.manual_seed(0)
    return GatedABMIL(in_dim=6, embed_dim=8, attention_dim=4, n_outputs=3, gated=gated, **kw).eval()


@pytest.mark.parametrize("gated", [True, False])
def test_padded_batch_equals_separate_bags(gated: bool) -> None:
    model = _model(gated)
    bags = [torch.randn(5, 6), torch.randn(2, 6), torch.randn(1, 6)]
    x = torch.zeros(3, 5, 6)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    for b, bag in enumerate(bags):
        x[b, : len(bag)] = bag
        x[b, len(bag):] = 1e3  # garbage in the padding must not leak into the result
        mask[b, : len(bag)] = True
    with torch.no_grad():
        batched = model(x, mask)
        for b, bag in enumerate(bags):
            alone = model(bag.unsqueeze(0))
            n = len(bag)
            torch.testing.assert_close(batched["logits"][b], alone["logits"][0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(batched["embedding"][b], alone["embedding"][0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(batched["attention"][b, :n], alone["attention"][0], rtol=1e-5, atol=1e-6)
            assert torch.isneginf(batched["attention"][b, n:]).all()
    assert batched["logits"].shape == (3, 3) and batched["embedding"].shape == (3, 8)


def test_single_patch_bag_uses_that_patch() -> None:
    model = _model()
    x = torch.randn(1, 1, 6)
    with torch.no_grad():
        out = model(x)
        h = model.embed(x)
        torch.testing.assert_close(out["embedding"], h[:, 0])
        torch.testing.assert_close(out["logits"], model.classifier(h[:, 0]))
    assert out["attention"].shape == (1, 1) and torch.isfinite(out["attention"]).all()


def test_attention_is_raw_scores_and_pooling_uses_their_softmax() -> None:
    model = _model()
    x = torch.randn(2, 7, 6)
    with torch.no_grad():
        out = model(x)
        h = model.embed(x)
        raw = model.attention_logits(h)
    torch.testing.assert_close(out["attention"], raw)
    assert not torch.allclose(out["attention"].sum(-1), torch.ones(2))  # not normalised
    z = (torch.softmax(raw, -1).unsqueeze(-1) * h).sum(1)
    torch.testing.assert_close(out["embedding"], z)


def test_hand_set_weights_give_hand_computed_outputs() -> None:
    model = GatedABMIL(in_dim=2, embed_dim=2, attention_dim=1, n_outputs=1, dropout=0.0).eval()
    with torch.no_grad():
        model.fc[0].weight.copy_(torch.eye(2))
        model.fc[0].bias.zero_()
        model.attention_v.weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.attention_v.bias.zero_()
        model.attention_u.weight.zero_()
        model.attention_u.bias.zero_()  # gate = sigmoid(0) = 0.5
        model.attention_w.weight.fill_(2.0)
        model.attention_w.bias.zero_()
        model.classifier.weight.copy_(torch.tensor([[1.0, 1.0]]))
        model.classifier.bias.fill_(0.5)
        out = model(torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-1.0, 2.0]]]))
    # h = relu(x) = [1,0], [0,3], [0,2]; s = 2 * 0.5 * tanh(h_0) = [tanh 1, 0, 0]
    t = math.tanh(1.0)
    assert out["attention"][0].tolist() == pytest.approx([t, 0.0, 0.0], abs=1e-6)
    a = [math.exp(t) / (math.exp(t) + 2), 1 / (math.exp(t) + 2), 1 / (math.exp(t) + 2)]
    z = [a[0], 3 * a[1] + 2 * a[2]]
    assert out["embedding"][0].tolist() == pytest.approx(z, abs=1e-6)
    assert out["logits"].item() == pytest.approx(z[0] + z[1] + 0.5, abs=1e-6)


def test_unbatched_input_and_gradients() -> None:
    model = _model().train()
    x = torch.randn(4, 6, requires_grad=True)
    out = model(x)
    assert out["logits"].shape == (1, 3)
    out["logits"].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


def test_masked_softmax_of_empty_bag_is_zero() -> None:
    w = masked_softmax(torch.randn(2, 3), torch.tensor([[True, False, True], [False, False, False]]))
    assert w[0].sum().item() == pytest.approx(1.0) and w[0, 1].item() == 0.0
    assert w[1].tolist() == [0.0, 0.0, 0.0]


def test_registry_builds_and_validates_kwargs() -> None:
    model = create_model("abmil", in_dim=16, embed_dim=8, attention_dim=4, n_outputs=2, gated=False)
    assert isinstance(model, GatedABMIL) and model.attention_u is None
    assert model.init_kwargs["in_dim"] == 16
    with pytest.raises(ConfigError, match="embed_dim"):
        create_model("abmil", embed_dim="wide")
    with pytest.raises(ConfigError, match="dropout"):
        create_model("abmil", dropout=1.5)


def test_feature_normalization_standardises_inside_embed() -> None:
    torch.manual_seed(3)
    model = GatedABMIL(in_dim=6, embed_dim=8, attention_dim=4, n_outputs=2, dropout=0.0).eval()
    x = torch.randn(2, 5, 6) * torch.tensor([1.0, 10, 0.1, 3, 1, 2]) + 7
    mean, std = x.reshape(-1, 6).mean(0), x.reshape(-1, 6).std(0)
    reference = model((x - mean) / std)
    model.set_feature_normalization(mean, std)
    out = model(x)
    torch.testing.assert_close(out["logits"], reference["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["attention"], reference["attention"], rtol=1e-5, atol=1e-5)
    state = model.state_dict()  # the statistics travel with the weights (checkpoints, exact engine)
    assert torch.allclose(state["feature_mean"], mean) and torch.allclose(state["feature_scale"], 1 / std)
    model.set_feature_normalization(torch.zeros(6), torch.zeros(6))  # constant features: scale 1, not inf
    assert torch.equal(model.feature_scale, torch.ones(6))
