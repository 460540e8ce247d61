"""Fused attention gate (kernels/attention_gate*.py) against the unfused PyTorch gate.

The Triton kernels run on CPU under the interpreter. Triton decides when it is imported whether its
(and our) kernels are interpreted, so ``TRITON_INTERPRET=1`` must be set before anything imports
triton: :func:`test_triton_kernels_under_the_interpreter` runs the kernel tests of this module in a
fresh pytest process with the variable set; in the ordinary run they are skipped (and only there).
Every check draws fresh random inputs and poisons the kernel outputs with NaN beforehand, so an
element a kernel fails to write shows up as NaN.
"""

import zlib

import pytest
import torch
import torch.nn.functional as F
from medattn.kernels.attention_gate import attention_gate, reference_attention_gate, use_fused_gate
from support.interpreter import INTERPRETED, interpreted, not_interpreted, run_module_under_interpreter

from medattn.models.attention_unet import AttentionGate

# relative error ‖out − ref‖ / ‖ref‖ against the fp32 reference on the same (rounded) inputs
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@not_interpreted
def test_triton_kernels_under_the_interpreter():
    run_module_under_interpreter(__file__, "not under_the_interpreter and not cuda", min_passed=20, timeout=300)


@pytest.fixture
def fused(monkeypatch):
    """medattn.kernels.attention_gate_triton (interpreted here) with NaN-poisoned output allocation."""
    from medattn.kernels import attention_gate_triton as module

    assert type(module._gate_fwd_kernel).__name__ == "InterpretedFunction"
    monkeypatch.setattr(module, "_new_empty", lambda shape, like, dtype: torch.full(shape, float("nan"), dtype=dtype))
    monkeypatch.setattr(module, "_new_empty_like", lambda t: torch.full_like(t, float("nan")))
    return module


def _inputs(shape, dtype, seed, bias=True, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    feats = shape[1]
    theta = torch.randn(shape, generator=gen).to(dtype)
    phi = torch.randn(shape, generator=gen).to(dtype)
    w = torch.randn(1, feats, *([1] * (len(shape) - 2)), generator=gen) / feats**0.5
    b = torch.randn(1, generator=gen) if bias else None
    tensors = [theta, phi, w] + ([b] if bias else [])
    for t in tensors:
        t.requires_grad_(requires_grad)
    return theta, phi, w, b


def _fp32_leaves(*tensors):
    return [None if t is None else t.detach().float().requires_grad_(True) for t in tensors]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not out.isnan().any(), "kernel left unwritten (NaN-poisoned) elements"
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


SHAPES = [(2, 20, 5, 6, 7), (1, 3, 4, 4, 4), (3, 16, 11, 9), (2, 8, 17, 130)]


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_unfused_gate(fused, shape, dtype):
    seed = zlib.crc32(repr((shape, dtype)).encode())
    theta, phi, w, b = _inputs(shape, dtype, seed)
    out = fused.fused_attention_gate(theta, phi, w, b)
    assert out.shape == (shape[0], 1, *shape[2:]) and out.dtype == dtype
    ref = reference_attention_gate(theta.float(), phi.float(), w, b)
    assert _rel(out, ref) < TOL[dtype]


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,bias", [((2, 20, 5, 6, 7), True), ((2, 5, 9, 10), False), ((1, 33, 3, 4, 5), True)])
def test_backward_matches_unfused_gate(fused, shape, bias, dtype):
    seed = zlib.crc32(repr((shape, bias, dtype, "bwd")).encode())
    theta, phi, w, b = _inputs(shape, dtype, seed, bias=bias, requires_grad=True)
    grad_out = torch.randn(shape[0], 1, *shape[2:], generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    out = fused.fused_attention_gate(theta, phi, w, b)
    out.backward(grad_out)

    rt, rp, rw, rb = _fp32_leaves(theta, phi, w, b)
    reference_attention_gate(rt, rp, rw, rb).backward(grad_out.float())
    assert _rel(out, reference_attention_gate(rt, rp, rw, rb)) < TOL[dtype]
    assert theta.grad.dtype == dtype and w.grad.shape == w.shape
    for got, want in ((theta.grad, rt.grad), (phi.grad, rp.grad), (w.grad, rw.grad)):
        assert _rel(got, want) < 4 * TOL[dtype]
    assert theta.grad is not phi.grad  # leaves never share a gradient tensor
    if bias:
        assert _rel(b.grad, rb.grad) < 4 * TOL[dtype]


@interpreted
def test_channels_last_inputs_and_deterministic_gradients(fused):
    theta, phi, w, b = _inputs((2, 12, 6, 5, 7), torch.float32, seed=7)
    theta_cl = theta.to(memory_format=torch.channels_last_3d).requires_grad_(True)
    phi_cl = phi.to(memory_format=torch.channels_last_3d).requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    grad_out = torch.rand(2, 1, 6, 5, 7)
    grads = []
    for _ in range(2):
        out = fused.fused_attention_gate(theta_cl, phi_cl, w, b)
        gs = torch.autograd.grad(out, (theta_cl, phi_cl, w, b), grad_out)
        assert gs[0].is_contiguous(memory_format=torch.channels_last_3d)
        grads.append(gs)
    rt, rp, rw, rb = _fp32_leaves(theta, phi, w, b)
    ref = reference_attention_gate(rt, rp, rw, rb)
    ref_grads = torch.autograd.grad(ref, (rt, rp, rw, rb), grad_out)
    assert _rel(out, ref) < 1e-5
    for got, again, want in zip(grads[0], grads[1], ref_grads):
        assert torch.equal(got, again)  # bitwise repeatable: partial sums reduced in a fixed order
        assert _rel(got, want) < 1e-5


@interpreted
def test_fused_gate_reproduces_the_attention_unet_gate(fused):
    torch.manual_seed(3)
    gate = AttentionGate(3, skip_channels=6, gating_channels=10, inter_channels=5, norm_kind="instance")
    x, g = torch.randn(2, 6, 8, 10, 6), torch.randn(2, 10, 4, 5, 3)
    _, alpha_model = gate(x, g)
    coarse = fused.fused_attention_gate(gate.theta_x(x), gate.phi_g(g), gate.psi.weight, gate.psi.bias)
    alpha = F.interpolate(coarse, size=x.shape[2:], mode="trilinear", align_corners=False)
    assert _rel(alpha, alpha_model) < 1e-5


def test_reference_gradcheck_float64():
    theta, phi, w, b = _inputs((1, 4, 3, 2, 3), torch.float64, seed=11)
    args = [t.double().requires_grad_(True) for t in (theta, phi, w, b)]
    assert torch.autograd.gradcheck(reference_attention_gate, args)


def test_dispatch_on_cpu_uses_the_reference(monkeypatch):
    monkeypatch.delenv("MEDATTN_ATTENTION", raising=False)
    theta, phi, w, b = _inputs((1, 4, 3, 3, 3), torch.float32, seed=5)
    assert torch.equal(attention_gate(theta, phi, w, b), reference_attention_gate(theta, phi, w, b))
    assert not use_fused_gate(theta)
    monkeypatch.setenv("MEDATTN_ATTENTION", "triton")
    assert not use_fused_gate(theta)  # the U-Net keeps its PyTorch gate on CPU whatever the override
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="triton backend cannot run on cpu tensors"):
        attention_gate(theta, phi, w, b)


def test_unsupported_inputs_are_clear_errors():
    theta, phi, w, b = _inputs((1, 4, 3, 3, 3), torch.float32, seed=9)
    with pytest.raises(TypeError, match=r"torch\.int32; supported: float32, float16, bfloat16, float64"):
        attention_gate(theta.int(), phi, w, b)
    with pytest.raises(TypeError, match=r"theta has dtype torch\.float64; supported: float32, float16, bfloat16$"):
        attention_gate(theta.double(), phi.double(), w, b, backend="triton")
    with pytest.raises(ValueError, match="differ in shape"):
        attention_gate(theta, phi[:, :, :2], w, b)
    with pytest.raises(ValueError, match="psi_weight has 3 elements, expected F = 4"):
        attention_gate(theta, phi, w[:, :3], b)
    with pytest.raises(ValueError, match="2 or 3 spatial axes"):
        attention_gate(theta[0, 0], phi[0, 0], w, b)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        attention_gate(theta, phi, w, b, backend="cuda")


@interpreted
def test_dispatch_runs_the_kernel_when_triton_is_forced(fused, monkeypatch):
    monkeypatch.setenv("MEDATTN_ATTENTION", "triton")
    theta, phi, w, b = _inputs((2, 6, 4, 5, 3), torch.float16, seed=13)
    out = attention_gate(theta, phi.float(), w, b)  # mixed dtypes are promoted to float32
    assert out.dtype == torch.float32
    assert _rel(out, reference_attention_gate(theta.float(), phi.float(), w, b)) < TOL[torch.float32]


@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs CUDA (compiled Triton kernels)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_kernels_match_the_unfused_gate(dtype, monkeypatch):
    monkeypatch.delenv("MEDATTN_ATTENTION", raising=False)
    theta, phi, w, b = (None if t is None else t.cuda() for t in _inputs((2, 24, 9, 10, 11), dtype, seed=17))
    leaves = [t.detach().requires_grad_(True) for t in (theta, phi, w, b)]
    assert use_fused_gate(theta)
    out = attention_gate(*leaves)
    grad_out = torch.rand_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_leaves = [t.detach().float().requires_grad_(True) for t in (theta, phi, w, b)]
    ref = reference_attention_gate(*ref_leaves)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.float())
    assert _rel(out, ref) < TOL[dtype]
    for got, want in zip(grads, ref_grads):
        assert _rel(got, want) < 4 * TOL[dtype]
