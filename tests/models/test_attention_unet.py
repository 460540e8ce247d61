"""Attention U-Net: shapes for odd sizes, the gate itself, deep supervision, layouts, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from medattn.engine.losses import DeepSupervisionLoss, DiceCELoss
from medattn.io.atomic import atomic_path
from medattn.models import AttentionGate, AttentionUNet, create_model
from medattn.models.blocks import _InstanceNormAct, group_count, to_channels_last

SMALL = [4, 8, 16]  # depth 3: inputs are padded to a multiple of 4


def small(dims: int = 3, **kw) -> AttentionUNet:
    torch.manual_seed(0)
    return create_model("attention_unet", spatial_dims=dims, channels=kw.pop("channels", SMALL), **kw)


@pytest.mark.parametrize(("dims", "shape", "channels"), [
    (3, (37, 41, 29), [4, 8, 16]),
    (2, (50, 43), [4, 8, 16, 32]),
])
def test_output_and_gate_shapes_for_odd_sizes(dims, shape, channels):
    model = small(dims, channels=channels, out_channels=3).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        logits, gates = model(x, return_gates=True)
        plain = model(x)
    assert logits.shape == (2, 3, *shape) and logits.is_contiguous()
    assert torch.equal(logits, plain)
    assert len(gates) == len(channels) - 1
    for lvl, gate in enumerate(gates):  # finest first, cropped to ceil(n / 2**l)
        assert gate.shape == (2, 1, *[-(-n // 2**lvl) for n in shape])
        assert float(gate.min()) >= 0.0 and float(gate.max()) <= 1.0
        assert float(gate.std()) > 0  # a real map, not a constant
    if dims == 2:
        assert [tuple(g.shape[2:]) for g in gates] == [(50, 43), (25, 22), (13, 11)]


def test_padding_is_replicate_at_the_high_end_then_cropped():
    model = small().eval()
    x = torch.randn(1, 1, 13, 10, 7)
    padded = F.pad(x, (0, 1, 0, 2, 0, 3), mode="replicate")  # up to 16 x 12 x 8 (multiples of 4)
    with torch.no_grad():
        out = model(x)
        ref = model(padded)[:, :, :13, :10, :7]
    assert out.shape == (1, 2, 13, 10, 7)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_deep_supervision_list_in_train_mode_tensor_in_eval():
    model = small(deep_supervision=True)
    x = torch.randn(2, 1, 37, 41, 29)
    outs = model.train()(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(2, 2, 37, 41, 29), (2, 2, 19, 21, 15)]
    # the low-resolution list feeds the deep-supervision loss directly (same ceil sizes as its sampling)
    loss = DeepSupervisionLoss(DiceCELoss(2))(outs, torch.randint(0, 2, (2, 1, 37, 41, 29)))
    loss.backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.heads)
    with torch.no_grad():
        out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 37, 41, 29)


@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
def test_gradient_reaches_every_parameter(norm):
    model = small(norm=norm, deep_supervision=True).train()
    x = torch.randn(2, 1, 20, 18, 13)
    y = torch.randint(0, 2, (2, 1, 20, 18, 13))
    DeepSupervisionLoss(DiceCELoss(2))(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        before_norm = name.endswith((".conv.bias", ".W.0.bias"))
        if norm == "group" and before_norm and group_count(p.numel()) == p.numel():
            continue  # bias of a conv followed by a norm with one channel per group: cancelled, gradient 0
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_norm_variants_use_the_right_layers(norm):
    model = small(norm=norm)
    kinds = {type(m).__name__ for m in model.modules()}
    if norm == "batch":
        assert "BatchNorm3d" in kinds and "GroupNorm" not in kinds
    else:
        groups = sorted({m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)})
        assert groups == [4, 8] and group_count(16) == 8 and group_count(12) == 6
    model.eval()
    x = torch.randn(1, 1, 9, 11, 6)
    with torch.no_grad():
        assert model(x).shape == (1, 2, 9, 11, 6)


def test_eval_is_deterministic_and_forward_changes_no_state():
    model = small(norm="batch").eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(1, 1, 21, 17, 10)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_state_dict_round_trip(tmp_path):
    model = small(deep_supervision=True)
    path = tmp_path / "model.pt"
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    restored = small(deep_supervision=True)
    torch.nn.init.constant_(restored.heads[0].weight, 0.0)  # make sure loading really overwrites
    restored.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(1, 1, 16, 12, 9)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), restored.eval()(x))


def _gate_inputs(c: int = 4):
    torch.manual_seed(1)
    gate = AttentionGate(3, skip_channels=c, gating_channels=2 * c, inter_channels=c // 2, norm_kind="instance")
    return gate, torch.randn(2, c, 8, 6, 4), torch.randn(2, 2 * c, 4, 3, 2)


def test_gate_matches_the_paper_formula():
    gate, x, g = _gate_inputs()
    out, alpha = gate(x, g)
    theta = F.conv3d(x, gate.theta_x.weight, stride=2)                                   # kernel 2, stride 2
    phi = F.conv3d(g, gate.phi_g.weight, gate.phi_g.bias)                                # 1x1
    q = F.conv3d(F.relu(theta + phi), gate.psi.weight, gate.psi.bias)                    # 1x1 -> 1 channel
    expected_alpha = F.interpolate(torch.sigmoid(q), size=(8, 6, 4), mode="trilinear", align_corners=False)
    w = F.conv3d(x * expected_alpha, gate.W[0].weight)
    n = gate.W[1].norm
    expected = F.instance_norm(w, weight=n.weight, bias=n.bias, eps=n.eps)
    assert gate.theta_x.kernel_size == (2, 2, 2) and gate.theta_x.stride == (2, 2, 2)
    torch.testing.assert_close(alpha, expected_alpha, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_gate_really_gates():
    gate, x, g = _gate_inputs()
    with torch.no_grad():
        gate.psi.bias.fill_(-1e4)       # q very negative everywhere -> alpha = 0 -> skip suppressed
        out, alpha = gate(x, g)
        assert float(alpha.max()) < 1e-12
        assert float(out.abs().max()) < 1e-4  # W(0): norm of a zero map = the norm's beta (0)
        gate.psi.bias.fill_(1e4)        # alpha = 1 -> the skip passes through W unchanged
        out, alpha = gate(x, g)
        assert float(alpha.min()) == 1.0
        torch.testing.assert_close(out, gate.W(x))


@pytest.mark.parametrize(("norm", "dims", "shape"), [
    ("instance", 3, (2, 1, 19, 21, 15)), ("instance", 2, (2, 1, 30, 27)), ("batch", 3, (2, 1, 19, 21, 15)),
])
def test_channels_last_and_contiguous_layouts_agree(norm, dims, shape):
    fast = small(dims, norm=norm, deep_supervision=True)
    plain = copy.deepcopy(fast)
    fast.memory_layout, plain.memory_layout = "channels_last", "contiguous"
    x = torch.randn(shape)
    outs_fast, outs_plain = fast(x), plain(x)
    for a, b in zip(outs_fast, outs_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    sum(o.square().mean() for o in outs_fast).backward()
    sum(o.square().mean() for o in outs_plain).backward()
    scale = max(float(p.grad.abs().max()) for p in plain.parameters())
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-3 * scale, msg=name)


def test_fused_instance_norm_act_gradients():
    torch.manual_seed(0)
    x = to_channels_last(torch.randn(2, 3, 4, 3, 5, dtype=torch.float64)).requires_grad_()
    w = torch.rand(3, dtype=torch.float64).add(0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64).requires_grad_()
    for slope in (0.01, None):
        y = _InstanceNormAct.apply(x, w, b, 1e-5, slope)
        ref = F.instance_norm(x, weight=w, bias=b, eps=1e-5)
        ref = ref if slope is None else F.leaky_relu(ref, slope)
        torch.testing.assert_close(y, ref)
        assert torch.autograd.gradcheck(lambda x, w, b, s=slope: _InstanceNormAct.apply(x, w, b, 1e-5, s),
                                        (x, w, b))


def test_bad_input_rank_and_bad_settings():
    model = small()
    with pytest.raises(ValueError, match=r"expected a 5-D input \(B, C, \*spatial\), got shape \(1, 16, 16\)"):
        model(torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        AttentionUNet(spatial_dims=1)
