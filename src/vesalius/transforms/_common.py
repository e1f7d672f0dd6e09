"""Helpers every transform shares: recording what was done, and checking per-axis arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import TransformError
from vesalius.core.volume import AppliedTransform, Volume

Interpolation = Literal["nearest", "linear", "bspline"]

SPLINE_ORDER: Mapping[str, int] = {"nearest": 0, "linear": 1, "bspline": 3}
"""scipy.ndimage spline order per interpolation name; bspline is cubic with prefiltering."""


def spline_order(interpolation: str) -> int:
    """The scipy order for an interpolation name, refusing names a typo would silently turn into linear."""
    try:
        return SPLINE_ORDER[interpolation]
    except KeyError:
        known = ", ".join(sorted(SPLINE_ORDER))
        raise TransformError(f"interpolation must be one of {known}; got {interpolation!r}") from None


def frozen_affine(affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A read-only copy, so a record keeps describing the grid it saw even if someone edits the original."""
    copy = np.array(affine, dtype=np.float64, copy=True)
    copy.flags.writeable = False
    return copy


def applied(
    volume: Volume,
    name: str,
    params: Mapping[str, Any],
    array: npt.NDArray[Any],
    affine: npt.NDArray[np.float64] | None = None,
) -> Volume:
    """The transformed volume, with a record holding the input grid so ``invert`` can return to it exactly."""
    record = AppliedTransform(
        name=name,
        params=dict(params),
        source_shape=volume.shape,
        source_affine=frozen_affine(volume.affine),
    )
    new_affine = volume.affine.copy() if affine is None else np.array(affine, dtype=np.float64)
    return volume.evolve(array=array, affine=new_affine, history=(*volume.history, record))


def int_triple(value: int | Sequence[int], name: str, minimum: int | None = None) -> tuple[int, int, int]:
    """One integer per spatial axis, from a scalar or a length-3 sequence."""
    raw: list[Any] = [value] * 3 if isinstance(value, int | np.integer) else list(value)
    if len(raw) != 3:
        raise TransformError(f"{name} needs one value per axis (i, j, k); got {value!r}")
    result = []
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise TransformError(f"{name} must hold integers; got {value!r}")
        if minimum is not None and item < minimum:
            raise TransformError(f"{name} must be >= {minimum} on every axis; got {value!r}")
        result.append(int(item))
    return result[0], result[1], result[2]


def positive_float_triple(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    """One positive finite float per spatial axis, from a scalar or a length-3 sequence."""
    raw: list[Any] = [value] * 3 if isinstance(value, int | float | np.number) else list(value)
    if len(raw) != 3:
        raise TransformError(f"{name} needs one value per axis (i, j, k); got {value!r}")
    try:
        floats = [float(item) for item in raw]
    except (TypeError, ValueError):
        raise TransformError(f"{name} must hold numbers; got {value!r}") from None
    if not all(np.isfinite(f) and f > 0 for f in floats):
        raise TransformError(f"{name} must be positive and finite on every axis; got {value!r}")
    return floats[0], floats[1], floats[2]


def spatial_mask(volume: Volume, mask: npt.ArrayLike | Volume, name: str = "mask") -> npt.NDArray[np.bool_]:
    """A boolean mask on the volume's spatial grid; a mask Volume must lie on the same grid."""
    if isinstance(mask, Volume):
        if not volume.same_grid(mask):
            raise TransformError(
                f"{name} lies on a different grid ({mask.describe()}) than the volume ({volume.describe()})"
            )
        mask = mask.array
    array = np.asarray(mask)
    if array.shape != volume.shape:
        raise TransformError(f"{name} must have the volume's spatial shape {volume.shape}; got {array.shape}")
    return array.astype(bool, copy=False)
