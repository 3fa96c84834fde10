"""Image geometry between ITK/SimpleITK (LPS) and Slicer (RAS)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def ijk_to_ras_from_geometry(origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """Slicer's 4x4 IJK-to-RAS matrix for an ITK geometry (LPS origin, spacing, 3x3 direction)."""
    direction_matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction_matrix @ np.diag(np.asarray(spacing, dtype=float))
    matrix[:3, 3] = LPS_TO_RAS @ np.asarray(origin, dtype=float)
    return matrix


def ijk_to_ras_matrix(image: Any) -> np.ndarray:
    """The IJK-to-RAS matrix of a 3D SimpleITK image (anything with GetOrigin/GetSpacing/GetDirection)."""
    return ijk_to_ras_from_geometry(image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def geometry_from_ijk_to_ras(matrix: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Invert :func:`ijk_to_ras_from_geometry`: the ITK (origin, spacing, direction) in LPS."""
    matrix = np.asarray(matrix, dtype=float)
    scaled_axes = LPS_TO_RAS @ matrix[:3, :3]
    spacing = np.linalg.norm(scaled_axes, axis=0)
    direction = scaled_axes / spacing
    origin = LPS_TO_RAS @ matrix[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def same_geometry(first: np.ndarray, second: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Whether two IJK-to-RAS matrices describe the same grid (within ``tolerance`` mm)."""
    return bool(np.allclose(np.asarray(first, dtype=float), np.asarray(second, dtype=float), atol=tolerance))


def image_on_grid(voxels: np.ndarray, ijk_to_ras: np.ndarray):
    """A SimpleITK image of ``voxels`` (k, j, i) placed on the grid of the IJK-to-RAS matrix."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels))
    origin, spacing, direction = geometry_from_ijk_to_ras(ijk_to_ras)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image
