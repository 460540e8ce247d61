"""blocked_attention3d dispatch: the reference on CPU, overrides and clear errors."""

import pytest
import torch
from medattn.kernels import Partition, bias_table_size, blocked_attention3d, reference_blocked_attention3d


def _inputs(dtype=torch.float32, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, 2, 16, generator=gen).to(dtype).requires_grad_(requires_grad) for _ in range(3))
    table = torch.randn(2, bias_table_size((2, 2, 2)), generator=gen).requires_grad_(requires_grad)
    return q, k, v, table


def test_cpu_default_is_the_reference(monkeypatch):
    monkeypatch.delenv("MEDATTN_ATTENTION", raising=False)
    q, k, v, table = _inputs(requires_grad=True)
    part = Partition((2, 2, 2), shift=(1, 1, 0))
    out = blocked_attention3d(q, k, v, part, table)
    assert torch.equal(out, reference_blocked_attention3d(q, k, v, part, table))
    out.sum().backward()
    assert table.grad is not None and table.grad.shape == table.shape and q.grad.abs().sum() > 0


def test_reference_can_be_forced(monkeypatch):
    monkeypatch.setenv("MEDATTN_ATTENTION", "reference")
    q, k, v, _ = _inputs()
    assert torch.equal(blocked_attention3d(q, k, v, Partition(2)), reference_blocked_attention3d(q, k, v, Partition(2)))


@pytest.mark.parametrize("how", ["env", "argument"])
def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch, how):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kwargs = {}
    if how == "env":
        monkeypatch.setenv("MEDATTN_ATTENTION", "triton")
    else:
        kwargs["backend"] = "triton"
    q, k, v, table = _inputs()
    with pytest.raises(ValueError, match=r"the triton attention backend needs CUDA tensors \(q is on cpu\); "
                                         r"use backend='reference' or set TRITON_INTERPRET=1"):
        blocked_attention3d(q, k, v, Partition(2), table, **kwargs)


def test_triton_rejects_float64_and_unknown_backends_are_errors():
    q, k, v, _ = _inputs(torch.float64)
    with pytest.raises(ValueError, match="unsupported dtype float64: expected one of float32, float16, bfloat16"):
        blocked_attention3d(q, k, v, Partition(2), backend="triton")
    with pytest.raises(ValueError, match="backend='flash': expected 'reference' or 'triton'"):
        blocked_attention3d(q, k, v, Partition(2), backend="flash")


def test_bad_shapes_fail_on_the_default_path():
    q, k, v, _ = _inputs()
    with pytest.raises(ValueError, match=r"bias_table has shape \(2, 27\): expected \(2, 125\)"):
        blocked_attention3d(q, k, v, Partition(3), torch.zeros(2, 27))
