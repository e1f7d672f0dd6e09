"""Resampling: to a new voxel spacing, or onto any other grid, with scipy.ndimage.

``interpolation`` is "linear" (trilinear, the default for images), "bspline" (cubic B-spline with
prefiltering: smoother, may overshoot) or "nearest" (the only choice that keeps a label map's values).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import TransformError
from vesalius.core.volume import Volume
from vesalius.transforms._common import (
    Interpolation,
    applied,
    int_triple,
    positive_float_triple,
    spline_order,
)
from vesalius.transforms._sampling import sample


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, int, int]:
    """Voxels per axis that keep the field of view: ``round(n * spacing / target)``, halves rounded up."""
    counts = [max(1, int(np.floor(n * s / t + 0.5))) for n, s, t in zip(shape, spacing, target_spacing, strict=True)]
    return counts[0], counts[1], counts[2]


def resample(
    volume: Volume,
    spacing: float | Sequence[float],
    interpolation: Interpolation = "linear",
) -> Volume:
    """Resample to ``spacing`` mm (one value, or one per axis i, j, k), keeping origin and direction.

    The centre of voxel (0, 0, 0) stays where it was, so the new grid covers the old field of view up to
    a fraction of a voxel at the far end; voxels there repeat the nearest edge value rather than padding.
    """
    target = positive_float_triple(spacing, "spacing")
    order = spline_order(interpolation)
    shape = resampled_shape(volume.shape, volume.spacing.tolist(), target)
    affine = volume.affine.copy()
    affine[:3, :3] = volume.direction * np.asarray(target)[None, :]
    array = sample(volume.array, volume.affine, shape, affine, order, fill=None)
    params = {"spacing": target, "interpolation": interpolation, "shape": shape}
    return applied(volume, "resample", params, array, affine)


def _checked_affine(affine: npt.ArrayLike) -> npt.NDArray[np.float64]:
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise TransformError(f"target affine must be 4x4; got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise TransformError("target affine holds non-finite values")
    if not np.array_equal(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise TransformError(f"target affine's last row must be (0, 0, 0, 1); got {matrix[3].tolist()}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise TransformError("target affine is singular: its spacing or direction is degenerate")
    return matrix.copy()


def resample_to_grid(
    volume: Volume,
    shape: Sequence[int],
    affine: npt.ArrayLike,
    interpolation: Interpolation = "linear",
    fill: float = 0.0,
) -> Volume:
    """Resample onto the grid ``shape`` x ``affine`` (index to LPS), e.g. another series' or an atlas'.

    Any direction is allowed, so this also reslices obliquely. Target voxels outside the input's field of
    view take ``fill`` (give -1024 for CT air).
    """
    target_shape = int_triple(shape, "shape", minimum=1)
    target_affine = _checked_affine(affine)
    order = spline_order(interpolation)
    fill_value = float(fill)
    array = sample(volume.array, volume.affine, target_shape, target_affine, order, fill=fill_value)
    params = {
        "shape": target_shape,
        "affine": tuple(tuple(float(v) for v in row) for row in target_affine),
        "interpolation": interpolation,
        "fill": fill_value,
    }
    return applied(volume, "resample_to_grid", params, array, target_affine)
