"""The PyTorch reference against independent oracles: a dense per-token oracle and a Swin-style
roll/partition/mask implementation; gradcheck in float64 (bias table included); reduced precisions."""

import math

import pytest
import torch
from medattn.kernels import Partition, bias_table_size, reference_blocked_attention3d
from support.attention import naive_blocked_attention3d

CASES = [  # (spatial, window, dilation, shift, heads, head_dim)
    ((4, 8, 8), (2, 4, 4), None, None, 2, 16),          # divisible
    ((5, 7, 6), (2, 4, 4), None, None, 3, 32),          # ragged on every axis
    ((4, 8, 8), (2, 4, 4), None, (1, 2, 2), 2, 16),     # Swin shift, divisible
    ((5, 7, 6), (2, 4, 4), None, (1, 2, 1), 1, 64),     # shift + ragged
    ((6, 6, 7), (3, 3, 3), (2, 2, 2), None, 2, 16),     # dilated groups, ragged groups
    ((6, 6, 6), (3, 3, 3), (2, 2, 2), None, 2, 32),     # dilated, window = full strided extent
    ((7, 6, 5), (2, 2, 8), (2, 3, 1), (1, 1, 3), 2, 16),  # dilation + shift + ragged
    ((3, 3, 3), (8, 8, 8), (4, 1, 1), None, 1, 16),     # window larger than the map, empty groups
]


def _inputs(spatial, heads, hd, window, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, *spatial, heads, hd, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    table = torch.randn(heads, bias_table_size(window), generator=gen, dtype=torch.float64)
    return q, k, v, table


@pytest.mark.parametrize("spatial,window,dilation,shift,heads,hd", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_dense_oracle(spatial, window, dilation, shift, heads, hd, with_bias):
    q, k, v, table = _inputs(spatial, heads, hd, window, seed=hash((spatial, window, with_bias)) % 1000)
    table = table if with_bias else None
    out = reference_blocked_attention3d(q, k, v, Partition(window, dilation, shift), table)
    expected = naive_blocked_attention3d(q, k, v, window, dilation, shift, table)
    assert out.shape == q.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial,window,dilation,shift,heads,hd", CASES)
def test_gradients_match_dense_oracle(spatial, window, dilation, shift, heads, hd):
    """dq, dk, dv and d(bias) against autograd through the dense oracle, ragged and shifted cases included
    (the reference's gathers have custom backwards that rely on padding slots getting zero gradient)."""
    q, k, v, table = _inputs(spatial, heads, hd, window, seed=hash((spatial, window)) % 1000 + 7)
    grad_out = torch.randn_like(q)
    grads = []
    for fn in (lambda *a: reference_blocked_attention3d(*a[:3], Partition(window, dilation, shift), a[3]),
               lambda *a: naive_blocked_attention3d(*a[:3], window, dilation, shift, a[3])):
        leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v, table)]
        fn(*leaves).backward(grad_out)
        grads.append([x.grad for x in leaves])
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def _swin(q, k, v, window, shift, table):
    """Swin-style: roll by -shift, partition, 3-region mask (MONAI compute_mask), attend, reverse."""
    B, D, H, W, heads, hd = q.shape
    wd, wh, ww = window

    def roll(x):
        return torch.roll(x, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))

    region = torch.zeros(D, H, W)
    cnt = 0
    for sd in (slice(0, -wd), slice(-wd, -shift[0]), slice(-shift[0], None)):
        for sh in (slice(0, -wh), slice(-wh, -shift[1]), slice(-shift[1], None)):
            for sw in (slice(0, -ww), slice(-ww, -shift[2]), slice(-shift[2], None)):
                region[sd, sh, sw] = cnt
                cnt += 1

    def part(x):  # [B, D, H, W, ...] -> [B * nW, T, ...]
        x = x.reshape(x.shape[0], D // wd, wd, H // wh, wh, W // ww, ww, *x.shape[4:])
        x = x.permute(0, 1, 3, 5, 2, 4, 6, *range(7, x.dim()))
        return x.reshape(-1, wd * wh * ww, *x.shape[7:])

    qw, kw, vw = (part(roll(x)).transpose(1, 2) for x in (q, k, v))  # [B*nW, heads, T, hd]
    rw = part(region[None])  # [nW, T]
    mask = (rw[:, :, None] != rw[:, None, :]).repeat(B, 1, 1)
    coords = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + torch.tensor([wd - 1, wh - 1, ww - 1])
    index = (rel[..., 0] * (2 * wh - 1) + rel[..., 1]) * (2 * ww - 1) + rel[..., 2]
    scores = qw @ kw.transpose(-1, -2) / math.sqrt(hd) + table[:, index]
    scores = scores.masked_fill(mask[:, None], float("-inf"))
    out = (torch.softmax(scores, -1) @ vw).transpose(1, 2)  # [B*nW, T, heads, hd]
    out = out.reshape(B, D // wd, H // wh, W // ww, wd, wh, ww, heads, hd).permute(0, 1, 4, 2, 5, 3, 6, 7, 8)
    out = out.reshape(B, D, H, W, heads, hd)
    return torch.roll(out, shifts=shift, dims=(1, 2, 3))


def test_shifted_windows_match_swin():
    window, shift = (2, 4, 4), (1, 2, 2)
    q, k, v, table = _inputs((4, 8, 8), 2, 16, window, seed=7)
    out = reference_blocked_attention3d(q, k, v, Partition(window, shift=shift), table)
    torch.testing.assert_close(out, _swin(q, k, v, window, shift, table), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("partition", [
    Partition((2, 2, 3), shift=(1, 1, 1)),                      # ragged + shifted
    Partition((2, 2, 2), dilation=(2, 1, 2)),                   # dilated, ragged groups
])
def test_gradcheck_float64_with_bias(partition):
    q, k, v, table = _inputs((2, 3, 3), 1, 16, partition.window, seed=3)
    q, k, v, table = (x[:1].clone().requires_grad_() if x.dim() == 6 else x.clone().requires_grad_()
                      for x in (q, k, v, table))
    assert torch.autograd.gradcheck(lambda *a: reference_blocked_attention3d(*a[:3], partition, a[3]),
                                    (q, k, v, table), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_reduced_precision_accumulates_in_fp32(dtype, tol):
    part = Partition((2, 4, 4), shift=(1, 2, 0))
    q, k, v, table = _inputs((5, 7, 6), 2, 32, part.window, dtype=dtype, seed=11)
    out = reference_blocked_attention3d(q, k, v, part, table.float())
    exact = naive_blocked_attention3d(q, k, v, part.window, None, part.shift, table)
    assert out.dtype == dtype
    assert ((out.double() - exact).norm() / exact.norm()).item() < tol


def test_gradients_reach_every_token_and_the_bias():
    part = Partition((2, 3, 3), dilation=(1, 2, 1), shift=(1, 1, 2))
    q, k, v, table = (x.float().requires_grad_() for x in _inputs((3, 5, 4), 2, 16, part.window, seed=5))
    reference_blocked_attention3d(q, k, v, part, table).square().sum().backward()
    for x in (q, k, v, table):
        assert torch.isfinite(x.grad).all()
    assert (v.grad.abs().sum(-1) > 0).all()  # every token is some query's key
