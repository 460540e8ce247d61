"""Per-axis block tables: groups, windows, ragged padding and the shift's wrapped flag."""

import torch
from medattn.kernels import Partition
from medattn.kernels.layout import axis_layout, grid_layout


def test_plain_ragged_windows():
    ax = axis_layout(5, 2, 1, 0)
    assert ax.coord.tolist() == [[0, 1], [2, 3], [4, -1]]
    assert ax.wrapped.tolist() == [[0, 0], [0, 0], [0, 0]]


def test_shift_rolls_and_flags_wrapped_tokens():
    # rolled position p holds coordinate (p + 1) mod 5; p >= 4 came around from the start
    ax = axis_layout(5, 2, 1, 1)
    assert ax.coord.tolist() == [[1, 2], [3, 4], [0, -1]]
    assert ax.wrapped.tolist() == [[0, 0], [0, 0], [1, 0]]
    ax = axis_layout(8, 4, 1, 2)
    assert ax.coord.tolist() == [[2, 3, 4, 5], [6, 7, 0, 1]]
    assert ax.wrapped.tolist() == [[0, 0, 0, 0], [0, 0, 1, 1]]


def test_dilated_groups_use_strided_coordinates():
    # groups g = i mod 2: {0, 2, 4} and {1, 3}; windows of 2 in the strided coordinate
    ax = axis_layout(5, 2, 2, 0)
    assert ax.coord.tolist() == [[0, 2], [4, -1], [1, 3]]
    # a window covering the whole strided extent: one block per group spanning the axis
    ax = axis_layout(6, 8, 3, 0)
    assert ax.coord.tolist() == [[0, 3, -1, -1, -1, -1, -1, -1], [1, 4, -1, -1, -1, -1, -1, -1],
                                 [2, 5, -1, -1, -1, -1, -1, -1]]
    # more groups than tokens: empty groups have no blocks
    assert axis_layout(2, 2, 4, 0).coord.tolist() == [[0, -1], [1, -1]]


def test_every_token_sits_in_exactly_one_slot():
    for part in (Partition((2, 3, 4)), Partition((3, 2, 2), dilation=(2, 3, 1), shift=(1, 1, 1)),
                 Partition((8, 8, 8), dilation=(3, 3, 3))):
        for axis, n in zip(grid_layout((7, 6, 5), part), (7, 6, 5)):
            real = axis.coord[axis.coord >= 0]
            assert sorted(real.tolist()) == list(range(n))
            assert axis.coord.dtype == torch.int32 and axis.wrapped.shape == axis.coord.shape
