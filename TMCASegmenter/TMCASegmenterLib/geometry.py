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


def ras_to_lps(point: Sequence[float]) -> tuple[float, float, float]:
    """A point from Slicer's RAS to ITK's LPS (and back: the map is its own inverse)."""
    x, y, z = (float(value) for value in point)
    return -x, -y, z


def click_point_lps(world_ras: Sequence[float], world_to_volume: np.ndarray | None = None) -> tuple[float, float, float]:
    """Where a point placed in Slicer's world (RAS) lies in the scan as the engine reads it (LPS, mm).

    The engine reads the volume's voxels with their own IJK-to-RAS, without the volume's parent
    transform (:func:`TMCASegmenterLib.segments.import_findings` puts results back under it), so a
    click in the world is first brought into the volume's local space: ``world_to_volume`` is the
    4x4 matrix from world to the volume's parent space (the inverse of its parent transform; None
    when the volume is not transformed). A non-linear parent transform is applied point by point
    in the Slicer bridge (``vtkMRMLTransformNode.TransformPointFromWorld``) before this call.
    """
    point = np.append(np.asarray(world_ras, dtype=float), 1.0)
    if point.shape != (4,) or not np.all(np.isfinite(point)):
        raise ValueError(f"a point needs three finite coordinates, not {world_ras!r}")
    if world_to_volume is not None:
        point = np.asarray(world_to_volume, dtype=float) @ point
    return ras_to_lps(point[:3] / point[3])
