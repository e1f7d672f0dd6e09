"""Segmentation preprocessing: per-channel intensity normalization, then resampling to the plan's spacing.

Both training (sampling, trainer) and inference call these functions, so a network always sees voxels
prepared the same way.

- Normalization is done here per channel in numpy rather than with ``vesalius.transforms.zscore``/``clip``,
  because those pool statistics over all channels of a 4-D volume. It is not recorded in the history: a
  prediction is a label or probability map, and mapping it back only needs the spatial records.
- CT channels are clipped to the plan's ``clip`` then standardised with the dataset ``mean``/``std``.
  Z-score channels use the case's own mean and std over the whole volume. nnU-Net restricts the statistics
  to the nonzero mask only when it crops to the nonzero region, which is not done here.
- Images are resampled with **linear** interpolation (nnU-Net uses cubic B-splines): linear never
  overshoots the normalized range, costs a fraction of a cubic spline, and is what ``invert`` uses to map
  probabilities back. Labels use nearest neighbour, on exactly the image's output grid.
- The resample is done with ``vesalius.transforms.resample``, so the history records the source grid and
  ``invert(result.with_array(labels), kind="label")`` returns to the input's exact shape and affine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.common.dataset import LoadedCase
from vesalius.engines.common.plan import CTNormalization, SegmentationPlan, ZScoreNormalization
from vesalius.transforms import resample

_EPSILON = 1e-8
_SLAB = 1 << 22

__all__ = ["normalize_channel", "preprocess_case", "preprocess_image", "preprocess_label"]


def _mean_std(values: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Mean and standard deviation in float64, slab by slab, so no float64 copy of a large volume is made."""
    flat = values.reshape(-1)
    count = flat.size
    total = sum(float(flat[i : i + _SLAB].sum(dtype=np.float64)) for i in range(0, count, _SLAB))
    mean = total / max(count, 1)
    squares = 0.0
    for i in range(0, count, _SLAB):
        deviation = flat[i : i + _SLAB].astype(np.float64) - mean
        squares += float(np.dot(deviation, deviation))
    return mean, (squares / max(count, 1)) ** 0.5


def normalize_channel(
    values: npt.NDArray[Any], scheme: CTNormalization | ZScoreNormalization
) -> npt.NDArray[np.float32]:
    """One channel normalized as the plan says: a float32 copy changed in place (statistics in float64)."""
    data = np.array(values, dtype=np.float32)
    if isinstance(scheme, CTNormalization):
        low, high = scheme.clip
        np.clip(data, low, high, out=data)
        mean, std = scheme.mean, scheme.std
    else:
        mean, std = _mean_std(data)
    data -= np.float32(mean)
    data /= np.float32(max(std, _EPSILON))
    return data


def _channels_last(image: Volume) -> npt.NDArray[Any]:
    return image.array[..., None] if image.array.ndim == 3 else image.array


def preprocess_image(image: Volume, plan: SegmentationPlan) -> Volume:
    """Normalize each channel, then resample linearly to ``plan.target_spacing``; float32 (i, j, k, c)."""
    array = _channels_last(image)
    channels = array.shape[3]
    if channels != len(plan.normalization):
        raise InputError(
            f"image has {channels} channel(s) but the plan ({plan.dataset_name}) expects "
            f"{len(plan.normalization)} ({', '.join(plan.modalities)})"
        )
    if channels == 1:  # the common case: no second volume-sized buffer
        normalized = normalize_channel(array[..., 0], plan.normalization[0])[..., None]
    else:
        normalized = np.empty(array.shape, dtype=np.float32)
        for channel, scheme in enumerate(plan.normalization):
            normalized[..., channel] = normalize_channel(array[..., channel], scheme)
    result = resample(image.with_array(normalized), plan.target_spacing, interpolation="linear")
    return result.with_array(np.ascontiguousarray(result.array, dtype=np.float32))


def preprocess_label(label: Volume, plan: SegmentationPlan) -> Volume:
    """Resample a label map with nearest neighbour to the plan's spacing; same grid as ``preprocess_image``."""
    if label.array.ndim != 3:
        raise InputError(f"a label map must be 3-D (i, j, k); got shape {label.array.shape}")
    return resample(label, plan.target_spacing, interpolation="nearest")


def preprocess_case(loaded: LoadedCase, plan: SegmentationPlan) -> tuple[Volume, Volume]:
    """The image and its label, both on the plan's grid; the label keeps its integer dtype."""
    return preprocess_image(loaded.image, plan), preprocess_label(loaded.label, plan)
