"""Geometry helpers for tests."""

import numpy as np


def rotation(axis: int, degrees: float) -> np.ndarray:
    """3×3 rotation matrix (det +1) by ``degrees`` about array axis ``axis`` (0, 1 or 2)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r
