"""The Triton kernels (forward, backward, autograd.Function) against the reference, under the interpreter.

Triton decides when it is imported whether kernels are interpreted, so ``TRITON_INTERPRET=1`` must be
set before anything imports triton: :func:`test_triton_kernels_under_the_interpreter` runs this
module's kernel tests in a fresh pytest process with the variable set; in the ordinary run they are
skipped (and only there). Every check draws fresh random inputs and poisons every kernel output
buffer with NaN (``triton_forward.POISON_OUTPUTS``), so an element a kernel fails to write shows up.
The interpreter has no bfloat16 and computes fp32 ``tl.dot`` in IEEE fp32: fp32 and fp16 are tested.
"""


import pytest
import torch
from medattn.kernels import Partition, bias_table_size, blocked_attention3d, reference_blocked_attention3d
from support.interpreter import INTERPRETED, interpreted, not_interpreted, run_module_under_interpreter

# ‖out − ref‖ / ‖ref‖ against the fp32 reference on the same (rounded) inputs
TOL = {torch.float32: 2e-6, torch.float16: 2e-3}
_SEED = iter(range(10_000, 20_000))


@not_interpreted
def test_triton_kernels_under_the_interpreter():
    run_module_under_interpreter(__file__, "not under_the_interpreter", min_passed=11, timeout=400)


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    if INTERPRETED:
        from medattn.kernels import triton_forward

        monkeypatch.setattr(triton_forward, "POISON_OUTPUTS", True)
        assert type(triton_forward._fwd_kernel).__name__ == "InterpretedFunction"


def _inputs(shape, window, dtype, requires_grad=True):
    gen = torch.Generator().manual_seed(next(_SEED))  # fresh inputs for every check
    q, k, v = (torch.randn(shape, generator=gen).to(dtype).requires_grad_(requires_grad) for _ in range(3))
    table = (0.5 * torch.randn(shape[4], bias_table_size(window), generator=gen)).requires_grad_(requires_grad)
    return q, k, v, table


def _rel(x, ref):
    x, ref = x.detach().float(), ref.detach().float()
    assert torch.isfinite(x).all(), "non-finite (unwritten?) elements"
    return ((x - ref).norm() / ref.norm()).item()


CASES = [  # (shape [B, D, H, W, heads, hd], window, dilation, shift, dtype)
    ((2, 4, 8, 8, 2, 16), (2, 4, 4), None, None, torch.float32),               # divisible, batch 2
    ((2, 5, 7, 3, 3, 32), (2, 4, 4), None, (1, 2, 1), torch.float16),          # ragged + shift, 3 heads
    ((2, 6, 6, 7, 2, 16), (3, 3, 3), (2, 2, 2), None, torch.float32),          # dilated groups, ragged
    ((2, 7, 6, 5, 2, 16), (2, 2, 8), (2, 3, 1), (1, 1, 3), torch.float16),     # dilation + shift
    ((1, 3, 5, 6, 1, 64), (2, 4, 4), None, (1, 0, 2), torch.float32),          # head_dim 64, ragged
]


@interpreted
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape,window,dilation,shift,dtype", CASES)
def test_forward_and_backward_match_the_reference(shape, window, dilation, shift, dtype, with_bias):
    part = Partition(window, dilation, shift)
    q, k, v, table = _inputs(shape, window, dtype)
    wrt = (q, k, v, table) if with_bias else (q, k, v)
    leaves = [x.detach().float().requires_grad_() for x in wrt]  # fp32 reference on the same rounded inputs
    grad = torch.randn(shape).to(dtype)
    out = blocked_attention3d(q, k, v, part, table if with_bias else None, backend="triton")
    ref = reference_blocked_attention3d(*leaves[:3], part, leaves[3] if with_bias else None)
    assert out.dtype == dtype and out.shape == shape
    assert _rel(out, ref) < TOL[dtype]
    got = torch.autograd.grad(out, wrt, grad)
    expected = torch.autograd.grad(ref, leaves, grad.float())
    for name, g, e in zip(("dq", "dk", "dv", "dbias"), got, expected):
        assert g.shape == e.shape and g.dtype == wrt[0 if name != "dbias" else 3].dtype, name
        assert _rel(g, e) < 4 * TOL[dtype], (name, _rel(g, e))


@interpreted
def test_strided_inputs_are_read_in_place():
    """q, k, v as views into one packed [B, D, H, W, 3, heads, hd] tensor (no copy needed)."""
    part = Partition((2, 3, 3), shift=(1, 1, 0))
    gen = torch.Generator().manual_seed(next(_SEED))
    packed = torch.randn(2, 3, 4, 5, 3, 2, 16, generator=gen).requires_grad_()
    q, k, v = packed.unbind(4)
    assert not q.is_contiguous() and q.stride(-1) == 1
    table = torch.randn(2, bias_table_size(part.window), generator=gen)
    out = blocked_attention3d(q, k, v, part, table, backend="triton")
    ref = reference_blocked_attention3d(q, k, v, part, table)
    assert _rel(out, ref) < TOL[torch.float32]
    (g,) = torch.autograd.grad(out.square().sum(), packed)
    (e,) = torch.autograd.grad(ref.square().sum(), packed)
    assert _rel(g, e) < 4 * TOL[torch.float32]


@interpreted
def test_saved_logsumexp_is_exact():
    from medattn.kernels.triton_forward import LOG2E, blocked_attention3d_forward, make_launch

    part = Partition((2, 4, 4), shift=(1, 2, 0))
    q, k, v, table = _inputs((1, 3, 6, 5, 2, 16), part.window, torch.float32, requires_grad=False)
    _, lse2 = blocked_attention3d_forward(q, k, v, table.contiguous(), make_launch(q, part))
    # the reference's lse: log-sum-exp over the same allowed keys = log of the softmax denominator
    from medattn.kernels.reference import block_index, relative_index

    idx = block_index((3, 6, 5), part, q.device)
    qb, kb = (x.reshape(1, -1, 2, 16).index_select(1, idx.gather).view(1, idx.n_blocks, 32, 2, 16).transpose(2, 3)
              for x in (q, k))
    scores = qb @ kb.transpose(-1, -2) / 4.0 + table[:, relative_index(part.window, q.device)] + idx.mask
    lse = torch.logsumexp(scores, -1).transpose(2, 3).reshape(1, -1, 2).index_select(1, idx.scatter)
    torch.testing.assert_close(lse2 / LOG2E, lse, rtol=1e-5, atol=1e-5)


@interpreted
def test_backward_is_deterministic():
    part = Partition((2, 3, 4), dilation=(1, 2, 1), shift=(1, 1, 2))
    q, k, v, table = _inputs((2, 3, 5, 6, 2, 32), part.window, torch.float16)
    grad = torch.randn(q.shape).to(torch.float16)
    runs = [torch.autograd.grad(blocked_attention3d(q, k, v, part, table, backend="triton"), (q, k, v, table), grad)
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert runs[0][3].abs().sum() > 0


@interpreted
def test_fold_pairs_to_table_matches_index_add():
    from medattn.kernels.reference import relative_index
    from medattn.kernels.triton_backward import fold_pairs_to_table

    window = (2, 3, 4)
    pairs = torch.randn(3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(next(_SEED)))
    index = relative_index(window, torch.device("cpu")).reshape(-1)
    expected = torch.zeros(3, bias_table_size(window), dtype=torch.float64).index_add_(1, index, pairs.reshape(3, -1))
    torch.testing.assert_close(fold_pairs_to_table(pairs, window), expected, rtol=1e-12, atol=1e-12)
