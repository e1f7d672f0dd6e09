"""Intensity transforms: windowing, clipping and normalisation, each recorded so it can be undone.

Every function computes in float64 and returns float32, the precision networks consume. Each is an affine
map of intensities followed (for some) by clipping, so ``invert(..., kind="image")`` restores the input
exactly on the range that was not clipped, up to float32 rounding. A channel axis is treated as more
voxels: statistics are pooled over channels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import TransformError
from vesalius.core.volume import AppliedTransform, Volume
from vesalius.transforms._common import applied, spatial_mask


class WindowPreset(NamedTuple):
    """A display window in Hounsfield units: centre (level) and full width."""

    level: float
    width: float


WINDOW_PRESETS: Mapping[str, WindowPreset] = MappingProxyType(
    {
        "lung": WindowPreset(level=-600.0, width=1500.0),
        "mediastinum": WindowPreset(level=50.0, width=350.0),
        "bone": WindowPreset(level=400.0, width=1800.0),
        "brain": WindowPreset(level=40.0, width=80.0),
        "abdomen": WindowPreset(level=50.0, width=400.0),
    }
)
"""The usual CT windows, so pipelines name a window rather than repeat numbers."""


def _finite(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TransformError(f"{name} must be a number; got {value!r}") from None
    if not np.isfinite(number):
        raise TransformError(f"{name} must be finite; got {value!r}")
    return number


def _as_float32(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    return np.asarray(values, dtype=np.float32)


def _selected_values(volume: Volume, mask: npt.ArrayLike | Volume | None) -> npt.NDArray[np.float64]:
    """The voxel values statistics are taken from: all of them, or those under a spatial mask."""
    array = np.asarray(volume.array, dtype=np.float64)
    if mask is None:
        return array.ravel()
    selected = array[spatial_mask(volume, mask)].ravel()
    if selected.size == 0:
        raise TransformError("mask selects no voxel; statistics need at least one")
    return selected


def window(
    volume: Volume,
    level: float | None = None,
    width: float | None = None,
    preset: str | None = None,
) -> Volume:
    """Map ``[level - width/2, level + width/2]`` HU linearly onto ``[0, 1]``, clipping outside.

    Give either ``preset`` (a key of ``WINDOW_PRESETS``) or both ``level`` and ``width``.
    """
    if preset is not None:
        if level is not None or width is not None:
            raise TransformError(f"window: give preset {preset!r} or level and width, not both")
        key = str(preset).lower()
        if key not in WINDOW_PRESETS:
            known = ", ".join(WINDOW_PRESETS)
            raise TransformError(f"window: unknown preset {preset!r}; known presets are {known}")
        level, width = WINDOW_PRESETS[key]
    elif level is None or width is None:
        raise TransformError(f"window: needs a preset, or both level and width (got level={level}, width={width})")
    level = _finite(level, "window level")
    width = _finite(width, "window width")
    if width <= 0:
        raise TransformError(f"window width must be > 0 HU; got {width}")
    low = level - width / 2.0
    values = np.clip((np.asarray(volume.array, dtype=np.float64) - low) / width, 0.0, 1.0)
    params = {"level": level, "width": width, "preset": None if preset is None else str(preset).lower()}
    return applied(volume, "window", params, _as_float32(values))


def clip(volume: Volume, lower: float, upper: float) -> Volume:
    """Limit intensities to ``[lower, upper]``; values inside are kept, so its inverse is the identity."""
    lower = _finite(lower, "clip lower")
    upper = _finite(upper, "clip upper")
    if not lower < upper:
        raise TransformError(f"clip needs lower < upper; got lower={lower}, upper={upper}")
    values = np.clip(np.asarray(volume.array, dtype=np.float64), lower, upper)
    return applied(volume, "clip", {"lower": lower, "upper": upper}, _as_float32(values))


def zscore(
    volume: Volume,
    mask: npt.ArrayLike | Volume | None = None,
    mean: float | None = None,
    std: float | None = None,
) -> Volume:
    """Subtract the mean and divide by the standard deviation.

    Statistics come from the voxels under ``mask`` (e.g. the body, as nnU-Net does for MR) or from all
    voxels, unless given; the whole volume is then normalised with them. Fixed ``mean``/``std`` let a
    dataset-wide normalisation be applied to each case.
    """
    if mean is None or std is None:
        values = _selected_values(volume, mask)
        mean = float(values.mean()) if mean is None else mean
        std = float(values.std()) if std is None else std
    mean = _finite(mean, "zscore mean")
    std = _finite(std, "zscore std")
    if std <= 0:
        raise TransformError(
            f"zscore needs a standard deviation > 0; got {std} (is the volume, or the masked region, constant?)"
        )
    values = (np.asarray(volume.array, dtype=np.float64) - mean) / std
    return applied(volume, "zscore", {"mean": mean, "std": std}, _as_float32(values))


def percentile_normalize(
    volume: Volume,
    lower: float = 0.5,
    upper: float = 99.5,
    mask: npt.ArrayLike | Volume | None = None,
) -> Volume:
    """Clip to the ``lower``/``upper`` percentiles, then scale that range to ``[0, 1]``.

    Robust to the few extreme voxels (metal, air outside the body) that would squash a min-max scaling.
    Percentiles come from the voxels under ``mask`` when given.
    """
    lower = _finite(lower, "lower percentile")
    upper = _finite(upper, "upper percentile")
    if not 0.0 <= lower < upper <= 100.0:
        raise TransformError(f"percentiles need 0 <= lower < upper <= 100; got lower={lower}, upper={upper}")
    values = _selected_values(volume, mask)
    low, high = (float(v) for v in np.percentile(values, [lower, upper]))
    if not high > low:
        raise TransformError(
            f"percentile_normalize: the {lower}th and {upper}th percentiles are both {low}; "
            "the intensities have no spread to scale"
        )
    scaled = (np.clip(np.asarray(volume.array, dtype=np.float64), low, high) - low) / (high - low)
    params = {"lower": lower, "upper": upper, "low_value": low, "high_value": high}
    return applied(volume, "percentile_normalize", params, _as_float32(scaled))


def _unwindow(values: npt.NDArray[np.float64], params: Mapping[str, Any]) -> npt.NDArray[np.float64]:
    width, level = float(params["width"]), float(params["level"])
    return values * width + (level - width / 2.0)


def _unclip(values: npt.NDArray[np.float64], params: Mapping[str, Any]) -> npt.NDArray[np.float64]:
    return values


def _unzscore(values: npt.NDArray[np.float64], params: Mapping[str, Any]) -> npt.NDArray[np.float64]:
    return values * float(params["std"]) + float(params["mean"])


def _unpercentile(values: npt.NDArray[np.float64], params: Mapping[str, Any]) -> npt.NDArray[np.float64]:
    low, high = float(params["low_value"]), float(params["high_value"])
    return values * (high - low) + low


_INVERSES: Mapping[str, Callable[[npt.NDArray[np.float64], Mapping[str, Any]], npt.NDArray[np.float64]]] = {
    "window": _unwindow,
    "clip": _unclip,
    "zscore": _unzscore,
    "percentile_normalize": _unpercentile,
}

INTENSITY_TRANSFORMS = frozenset(_INVERSES)
"""Names of the records that change intensities only, never the grid."""


def invert_intensity(array: npt.NDArray[Any], record: AppliedTransform) -> npt.NDArray[Any]:
    """Undo one intensity record; float64 input stays float64, anything else comes back float32."""
    inverse = _INVERSES[record.name]
    restored = inverse(np.asarray(array, dtype=np.float64), record.params)
    return restored if array.dtype == np.float64 else _as_float32(restored)
