"""Image geometry: where each voxel sits in patient space.

Convention (the ITK/DICOM one): physical coordinates are LPS millimetres. For an array whose
axis ``i`` is the ``i``-th image index (x, y, z order: axis 0 is the fastest-varying index in
the file), the centre of voxel ``idx`` is at::

    origin + direction @ (spacing * idx)

``direction`` is a D×D matrix whose *columns* are the directions of the index axes.
``to_affine_ras`` gives the 4×4 (or 3×3 for 2-D) RAS affine that nibabel and MONAI use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LPS_TO_RAS_3D = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Spacing, origin and direction of a D-dimensional image grid (D = 2 or 3).

    Attributes:
        spacing: voxel size in mm per array axis, length D.
        origin: physical (LPS) position of the centre of voxel 0, length D.
        direction: D×D matrix; column i is the unit direction of array axis i (LPS).
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        d = len(self.spacing)
        if len(self.origin) != d or np.asarray(self.direction).shape != (d, d):
            raise ValueError(f"inconsistent geometry dimensions: {self}")

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @property
    def direction_matrix(self) -> np.ndarray:
        """(D, D) float64 array of the direction cosines (columns = axes)."""
        return np.asarray(self.direction, dtype=np.float64)

    @classmethod
    def identity(cls, ndim: int, spacing: tuple[float, ...] | None = None) -> Geometry:
        """Unit-spaced (unless given), zero origin, identity direction."""
        sp = tuple(float(s) for s in (spacing or (1.0,) * ndim))
        return cls(sp, (0.0,) * ndim, tuple(tuple(float(v) for v in r) for r in np.eye(ndim)))

    @classmethod
    def from_arrays(cls, spacing, origin, direction) -> Geometry:
        """Build from array-likes; ``direction`` may be flat (row-major, as SimpleITK gives it)."""
        sp = tuple(float(s) for s in np.ravel(spacing))
        d = len(sp)
        dm = np.asarray(direction, dtype=np.float64).reshape(d, d)
        direction = tuple(tuple(float(v) for v in r) for r in dm)
        return cls(sp, tuple(float(o) for o in np.ravel(origin)), direction)

    def to_affine_lps(self) -> np.ndarray:
        """(D+1, D+1) affine mapping array index → LPS mm."""
        d = self.ndim
        a = np.eye(d + 1)
        a[:d, :d] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        a[:d, d] = self.origin
        return a

    def to_affine_ras(self) -> np.ndarray:
        """(D+1, D+1) affine mapping array index → RAS mm (nibabel/MONAI convention).

        For 2-D images the first two axes are flipped exactly as in 3-D, so a 2-D image is treated
        as one slice of a 3-D volume.
        """
        a = self.to_affine_lps()
        d = self.ndim
        flip = np.eye(d + 1)
        flip[:d, :d] = _LPS_TO_RAS_3D[:d, :d]
        return flip @ a

    @classmethod
    def from_affine_ras(cls, affine: np.ndarray) -> Geometry:
        """Inverse of :meth:`to_affine_ras` for a (D+1, D+1) affine (no shear assumed)."""
        affine = np.asarray(affine, dtype=np.float64)
        d = affine.shape[0] - 1
        flip = np.eye(d + 1)
        flip[:d, :d] = _LPS_TO_RAS_3D[:d, :d]
        lps = flip @ affine
        m = lps[:d, :d]
        spacing = np.linalg.norm(m, axis=0)
        direction = m / spacing[None, :]
        return cls.from_arrays(spacing, lps[:d, d], direction)

    def index_to_physical(self, idx: np.ndarray) -> np.ndarray:
        """Map (N, D) continuous indices to (N, D) LPS mm."""
        idx = np.atleast_2d(np.asarray(idx, dtype=np.float64))
        return idx * np.asarray(self.spacing) @ self.direction_matrix.T + np.asarray(self.origin)

    def allclose(self, other: Geometry, atol: float = 1e-5) -> bool:
        """True when spacing, origin and direction agree within ``atol`` (mm / cosine)."""
        return (
            self.ndim == other.ndim
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction_matrix, other.direction_matrix, atol=atol)
        )

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin),
                "direction": [list(r) for r in self.direction]}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls.from_arrays(d["spacing"], d["origin"], d["direction"])
