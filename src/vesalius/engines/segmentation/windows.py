"""Where sliding windows start, how they are blended and which mirrored copies are averaged: numpy only.

Split from ``sliding_window`` so that the ONNX Runtime backend (``vesalius.deploy.runtime``) tiles a volume
exactly as the torch path does, without importing torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from vesalius.core.errors import InputError

__all__ = ["SIGMA_SCALE", "gaussian_weights", "mirror_sets", "window_starts"]

SIGMA_SCALE = 1.0 / 8.0


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis: the fewest windows with steps of at most (1 - overlap) * patch."""
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1); got {overlap}")
    if size <= patch:
        return [0]
    largest_step = max(1, math.floor(patch * (1.0 - overlap)))  # whole voxels, so rounding cannot exceed it
    count = math.ceil((size - patch) / largest_step) + 1
    step = (size - patch) / (count - 1)
    return [round(step * index) for index in range(count)]


def gaussian_weights(patch: int, gaussian: bool = True) -> np.ndarray:
    """One axis of the blending weight: a Gaussian peaking at 1 in the patch centre, or constant ones."""
    if not gaussian:
        return np.ones(patch, dtype=np.float64)
    centre = (patch - 1) / 2.0
    sigma = patch * SIGMA_SCALE
    weights = np.exp(-((np.arange(patch) - centre) ** 2) / (2.0 * sigma**2))
    floored: np.ndarray = np.maximum(weights, weights[weights > 0].min())
    return floored


def mirror_sets(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every combination of the spatial axes, the empty one included (8 for three axes, as nnU-Net)."""
    axes = sorted(set(int(a) for a in mirror_axes))
    if any(a not in (0, 1, 2) for a in axes):
        raise InputError(f"mirror_axes must be spatial axes 0, 1 or 2; got {list(mirror_axes)}")
    return [combo for n in range(len(axes) + 1) for combo in itertools.combinations(axes, n)]
