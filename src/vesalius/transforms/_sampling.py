"""Sampling one voxel grid onto another with scipy.ndimage; shared by resampling and by ``invert``.

A grid is a spatial shape plus the 4x4 index-to-LPS affine. A source voxel is taken to cover the cell of
half a voxel around its centre, so the source's extent in index space is ``[-0.5, n - 0.5]`` per axis.
"""

from __future__ import annotations

from itertools import product
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

_EXTENT_TOLERANCE = 1e-6
"""Index-space slack, so a target voxel lying on the source's edge is not lost to rounding."""

_CHUNK_VOXELS = 1 << 22
"""Target voxels per slab when building the inside mask, to bound memory on large grids."""


def index_map(
    source_affine: npt.NDArray[np.float64], target_affine: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The matrix and offset taking a target voxel index to the continuous source index of the same point."""
    combined = np.asarray(np.linalg.solve(source_affine, target_affine), dtype=np.float64)
    return combined[:3, :3], combined[:3, 3]


def _output_dtype(dtype: np.dtype[Any], order: int) -> np.dtype[Any]:
    """Nearest keeps labels' dtype; interpolation needs floats, and float64 input keeps its precision."""
    if order == 0:
        return dtype
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _working_array(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """ndimage cannot read bool or half floats; widen them without changing any value."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind == "f" and array.dtype.itemsize < 4:
        return array.astype(np.float32)
    return array


def inside_mask(
    source_shape: tuple[int, int, int],
    source_affine: npt.NDArray[np.float64],
    target_shape: tuple[int, int, int],
    target_affine: npt.NDArray[np.float64],
) -> npt.NDArray[np.bool_] | None:
    """Which target voxels fall inside the source's extent; ``None`` when all of them do (the usual case)."""
    matrix, offset = index_map(source_affine, target_affine)
    lower = -0.5 - _EXTENT_TOLERANCE
    upper = np.asarray(source_shape, dtype=np.float64) - 0.5 + _EXTENT_TOLERANCE
    corners = np.array(list(product(*[(0, n - 1) for n in target_shape])), dtype=np.float64)
    mapped = corners @ matrix.T + offset
    if np.all(mapped >= lower) and np.all(mapped <= upper):
        return None  # the extent is convex, so the corners decide for every voxel
    ni, nj, nk = target_shape
    i = np.arange(ni, dtype=np.float64)[:, None, None]
    j = np.arange(nj, dtype=np.float64)[None, :, None]
    mask = np.empty(target_shape, dtype=bool)
    step = max(1, _CHUNK_VOXELS // max(1, ni * nj))
    for start in range(0, nk, step):
        k = np.arange(start, min(nk, start + step), dtype=np.float64)[None, None, :]
        slab = np.ones((ni, nj, k.shape[2]), dtype=bool)
        for axis in range(3):
            coordinate = matrix[axis, 0] * i + matrix[axis, 1] * j + matrix[axis, 2] * k + offset[axis]
            slab &= (coordinate >= lower) & (coordinate <= upper[axis])
        mask[:, :, start : start + k.shape[2]] = slab
    return mask


def sample(
    array: npt.NDArray[Any],
    source_affine: npt.NDArray[np.float64],
    target_shape: tuple[int, int, int],
    target_affine: npt.NDArray[np.float64],
    order: int,
    fill: float | None,
) -> npt.NDArray[Any]:
    """Values of ``array`` (on the source grid) at the target grid's voxel centres.

    Near the edge, values are replicated from the closest source voxel (ndimage's "nearest" mode), so a
    grid covering the same field of view up to a fraction of a voxel gets no dark border. With ``fill``
    set, target voxels outside the source extent take that value instead. A trailing channel axis is
    sampled channel by channel on the same coordinates.
    """
    matrix, offset = index_map(source_affine, target_affine)
    off_diagonal = matrix - np.diag(np.diag(matrix))
    # axis-aligned grids (every plain resample) take ndimage's faster separable path
    transform = np.diag(matrix) if np.all(np.abs(off_diagonal) <= 1e-12 * np.abs(matrix).max()) else matrix
    work = _working_array(array)
    out_dtype = _output_dtype(work.dtype, order)
    channels = work.shape[3:]
    result = np.empty(tuple(target_shape) + channels, dtype=out_dtype)
    for channel in np.ndindex(*channels):
        kwargs: dict[str, Any] = {"output": result} if not channels else {"output": out_dtype}
        sampled = ndimage.affine_transform(  # a 3-D volume is written in place: no second target-sized buffer
            work[(..., *channel)],
            transform,
            offset=offset,
            output_shape=tuple(target_shape),
            order=order,
            mode="nearest",
            prefilter=order > 1,
            **kwargs,
        )
        if channels:
            result[(..., *channel)] = sampled
    if fill is not None:
        inside = inside_mask(
            (int(array.shape[0]), int(array.shape[1]), int(array.shape[2])),
            source_affine,
            target_shape,
            target_affine,
        )
        if inside is not None:
            result[~inside] = fill
    if array.dtype == np.bool_:
        return result.astype(bool)
    return result
