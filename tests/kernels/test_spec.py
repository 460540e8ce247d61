"""Partition validation and the input checks shared by both backends (one-line ValueErrors)."""

import pytest
import torch
from medattn.kernels import Partition, bias_table_size
from medattn.kernels.spec import check_inputs


def test_partition_normalises_ints_and_defaults():
    p = Partition(4, dilation=[2, 1, 3], shift=(1, 0, 2))
    assert p.window == (4, 4, 4) and p.dilation == (2, 1, 3) and p.shift == (1, 0, 2)
    assert p.block_size == 64
    q = Partition((2, 8, 8))
    assert q.strides == (1, 1, 1) and q.shifts == (0, 0, 0) and q.block_size == 128
    assert bias_table_size((2, 8, 8)) == 3 * 15 * 15


@pytest.mark.parametrize("kwargs,match", [
    ({"window": (0, 4, 4)}, r"Partition.window=\(0, 4, 4\): every entry must be >= 1"),
    ({"window": (4, 4)}, r"Partition.window=\(4, 4\): expected an int or three ints"),
    ({"window": 4, "dilation": (1, 0, 1)}, r"Partition.dilation=\(1, 0, 1\): every entry must be >= 1"),
    ({"window": 4, "shift": (2, 4, 0)}, r"Partition.shift=\(2, 4, 0\): each shift must be smaller than the window"),
    ({"window": 4, "shift": (-1, 0, 0)}, r"every entry must be >= 0"),
    ({"window": (2.0, 4, 4)}, r"expected an int or three ints"),
])
def test_bad_partitions_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Partition(**kwargs)


def _qkv(shape=(1, 4, 4, 4, 2, 16), dtype=torch.float32):
    return [torch.zeros(shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("change,match", [
    (lambda t: [t[0].to(torch.int32)] * 3, r"unsupported dtype int32: expected one of float32, float16, bfloat16$"),
    (lambda t: [x.double() for x in t], r"unsupported dtype float64"),
    (lambda t: _qkv((1, 4, 4, 4, 2, 24)), r"unsupported head_dim 24: expected one of 16, 32, 64, 128"),
    (lambda t: _qkv((4, 4, 4, 2, 16)), r"q has shape \(4, 4, 4, 2, 16\): expected 6 dims"),
    (lambda t: [t[0], t[1][:, :3], t[2]], r"q, k, v shapes differ"),
    (lambda t: [t[0], t[1].half(), t[2]], r"q, k, v dtypes differ: torch.float32, torch.float16"),
    (lambda t: _qkv((1, 0, 4, 4, 2, 16)), r"every dimension must be >= 1"),
])
def test_bad_inputs_are_clear_errors(change, match):
    with pytest.raises(ValueError, match=match):
        check_inputs(*change(_qkv()), Partition(2), None)


def test_float64_is_accepted_where_allowed():
    check_inputs(*[x.double() for x in _qkv()], Partition(2), None, allow_float64=True)


def test_bias_table_shape_must_match_heads_and_window():
    part = Partition((2, 4, 4))
    check_inputs(*_qkv(), part, torch.zeros(2, 3 * 7 * 7))
    with pytest.raises(ValueError, match=r"bias_table has shape \(2, 125\): expected \(2, 147\) = \[heads, "
                                         r"\(2wd-1\)\(2wh-1\)\(2ww-1\)\] for window \(2, 4, 4\)"):
        check_inputs(*_qkv(), part, torch.zeros(2, 125))
    with pytest.raises(ValueError, match=r"bias_table has shape \(3, 147\): expected \(2, 147\)"):
        check_inputs(*_qkv(), part, torch.zeros(3, 147))
    with pytest.raises(ValueError, match=r"bias_table has dtype torch\.int64"):
        check_inputs(*_qkv(), part, torch.zeros(2, 147, dtype=torch.long))
    with pytest.raises(ValueError, match=r"partition must be a medattn\.kernels\.Partition, got tuple"):
        check_inputs(*_qkv(), (2, 4, 4), None)
