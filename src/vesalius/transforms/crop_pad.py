"""Cropping and padding: grid changes by whole voxels, so values and voxel positions stay exact.

Each moves the origin so that every kept voxel stays at its LPS position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import TransformError
from vesalius.core.volume import Volume
from vesalius.transforms._common import applied, int_triple, spatial_mask

PadMode = Literal["constant", "edge", "reflect", "symmetric"]
PadAnchor = Literal["center", "end"]


def shifted_affine(affine: npt.NDArray[np.float64], offset: Sequence[int]) -> npt.NDArray[np.float64]:
    """The affine of a grid whose voxel (0, 0, 0) is voxel ``offset`` of ``affine``'s grid."""
    result = affine.copy()
    result[:3, 3] = affine[:3, :3] @ np.asarray(offset, dtype=np.float64) + affine[:3, 3]
    return result


def crop_array(array: npt.NDArray[Any], start: Sequence[int], stop: Sequence[int]) -> npt.NDArray[Any]:
    """A fresh copy of the spatial box ``[start, stop)``, channels untouched."""
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    return array[box].copy()


def pad_array(
    array: npt.NDArray[Any],
    before: Sequence[int],
    after: Sequence[int],
    mode: str = "constant",
    value: float = 0.0,
) -> npt.NDArray[Any]:
    """Pad the spatial axes by ``before``/``after`` voxels, never the channel axis."""
    widths = [(b, a) for b, a in zip(before, after, strict=True)] + [(0, 0)] * (array.ndim - 3)
    if mode == "constant":
        padded = np.pad(array, widths, mode="constant", constant_values=value)
    else:
        padded = np.pad(array, widths, mode=mode)  # type: ignore[call-overload]
    return np.asarray(padded)


def crop(volume: Volume, start: Sequence[int], stop: Sequence[int]) -> Volume:
    """Keep voxels ``start <= index < stop`` on each axis (as a slice would, but out-of-range is an error)."""
    lo = int_triple(start, "crop start", minimum=0)
    hi = int_triple(stop, "crop stop")
    for axis in range(3):
        if not lo[axis] < hi[axis] <= volume.shape[axis]:
            raise TransformError(
                f"crop box start={lo} stop={hi} must satisfy 0 <= start < stop <= shape {volume.shape} "
                f"on every axis (fails on axis {'ijk'[axis]})"
            )
    array = crop_array(volume.array, lo, hi)
    return applied(volume, "crop", {"start": lo, "stop": hi}, array, shifted_affine(volume.affine, lo))


def foreground_box(
    foreground: npt.NDArray[np.bool_], margin: Sequence[int]
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The bounding box of ``foreground`` grown by ``margin`` voxels and kept inside the grid."""
    if not foreground.any():
        raise TransformError("crop_to_foreground: no voxel is foreground, so there is no box to crop to")
    start, stop = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(foreground.any(axis=others))
        start.append(max(0, int(hits[0]) - margin[axis]))
        stop.append(min(foreground.shape[axis], int(hits[-1]) + 1 + margin[axis]))
    return (start[0], start[1], start[2]), (stop[0], stop[1], stop[2])


def crop_to_foreground(
    volume: Volume,
    threshold: float | None = None,
    mask: npt.ArrayLike | Volume | None = None,
    margin: int | Sequence[int] = 0,
) -> Volume:
    """Crop to the bounding box of the foreground plus ``margin`` voxels, clamped to the grid.

    Foreground is ``mask`` when given, else voxels with any channel ``> threshold``, else non-zero voxels
    (the nnU-Net convention).
    """
    if threshold is not None and mask is not None:
        raise TransformError("crop_to_foreground: give threshold or mask, not both")
    margins = int_triple(margin, "margin", minimum=0)
    if mask is not None:
        foreground = spatial_mask(volume, mask)
    else:
        selected = np.asarray(volume.array > threshold if threshold is not None else volume.array != 0)
        channel_axes = tuple(range(3, selected.ndim))
        foreground = np.asarray(selected.any(axis=channel_axes) if channel_axes else selected, dtype=bool)
    lo, hi = foreground_box(foreground, margins)
    params = {
        "start": lo,
        "stop": hi,
        "threshold": None if threshold is None else float(threshold),
        "from_mask": mask is not None,
        "margin": margins,
    }
    array = crop_array(volume.array, lo, hi)
    return applied(volume, "crop_to_foreground", params, array, shifted_affine(volume.affine, lo))


def _target_shape(
    current: tuple[int, int, int],
    shape: int | Sequence[int] | None,
    multiple_of: int | Sequence[int] | None,
) -> tuple[int, int, int]:
    if shape is not None and multiple_of is None:
        target = int_triple(shape, "pad shape", minimum=1)
        if any(t < n for t, n in zip(target, current, strict=True)):
            raise TransformError(
                f"pad shape {target} is smaller than the volume {current} on some axis; pad never crops (crop first)"
            )
        return target
    if multiple_of is None or shape is not None:
        raise TransformError("pad: give exactly one of shape or multiple_of")
    factors = int_triple(multiple_of, "pad multiple_of", minimum=1)
    padded = [-(-n // f) * f for n, f in zip(current, factors, strict=True)]
    return padded[0], padded[1], padded[2]


def pad(
    volume: Volume,
    shape: int | Sequence[int] | None = None,
    multiple_of: int | Sequence[int] | None = None,
    value: float = 0.0,
    mode: PadMode = "constant",
    anchor: PadAnchor = "center",
) -> Volume:
    """Grow the grid to ``shape`` (at least), or to the next ``multiple_of`` (what a U-Net's pooling needs).

    ``anchor="center"`` pads both sides equally, the odd voxel going at the end, so the anatomy stays
    centred; ``"end"`` pads after the last voxel only, so the origin does not move. ``mode`` is numpy's:
    "constant" uses ``value`` (e.g. -1024 for CT air), "edge", "reflect" and "symmetric" copy the image.
    """
    if mode not in ("constant", "edge", "reflect", "symmetric"):
        raise TransformError(f"pad mode must be constant, edge, reflect or symmetric; got {mode!r}")
    if anchor not in ("center", "end"):
        raise TransformError(f"pad anchor must be 'center' or 'end'; got {anchor!r}")
    target = _target_shape(volume.shape, shape, multiple_of)
    extra = [t - n for t, n in zip(target, volume.shape, strict=True)]
    before = tuple(e // 2 if anchor == "center" else 0 for e in extra)
    after = tuple(e - b for e, b in zip(extra, before, strict=True))
    array = pad_array(volume.array, before, after, mode, value)
    offset = tuple(-b for b in before)
    params = {"before": before, "after": after, "mode": mode, "value": float(value), "anchor": anchor}
    return applied(volume, "pad", params, array, shifted_affine(volume.affine, offset))
