"""Training and held-out CTs made from one real chest CT: nodules inserted on one side of the chest only.

With a single annotated CT, the only honest split is spatial. The patient's right lung (LPS x below the
midline of the lung mask) is where nodules are inserted for training and where background patches are drawn;
the left lung, with its real nodules, is held out: inserted nodules there (new seeds) and the real reference
nodules are what the model is scored on. A ``margin_mm`` keeps training patch centres far enough from the
midline that no training patch reaches into the held-out side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import InputError
from vesalius.engines.detection.insertion import InsertedNodule, InsertionSettings, insert_nodules
from vesalius.engines.detection.lung_mask import describe_source
from vesalius.engines.detection.preprocess import PreparedCT

Side = Literal["right", "left"]
"""The patient's side: right is LPS x below the midline, left above it."""

__all__ = ["Side", "midline_x", "on_side", "side_mask", "with_nodules"]


def _voxel_x(prepared: PreparedCT) -> npt.NDArray[np.float32]:
    """LPS x (mm) of every crop voxel, built from the affine's first row by broadcasting."""
    affine = prepared.image.affine
    shape = prepared.image.shape
    axes = [
        np.arange(n, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        for axis, n in enumerate(shape)
    ]
    x = np.float32(affine[0, 3]) + sum(np.float32(affine[0, axis]) * axes[axis] for axis in range(3))
    return np.broadcast_to(x, shape).astype(np.float32)


def midline_x(prepared: PreparedCT) -> float:
    """LPS x (mm) halfway between the lungs' outer edges: the plane that splits right from left lung."""
    mask = prepared.lung_mask.array.astype(bool)
    if not mask.any():
        raise InputError(f"{describe_source(prepared.image)}: the lung mask is empty, so it has no midline")
    x = _voxel_x(prepared)[mask]
    return float((x.min() + x.max()) / 2.0)


def on_side(points: npt.ArrayLike, side: Side, midline: float) -> npt.NDArray[np.bool_]:
    """(N,) whether each LPS point (N, 3) lies on ``side`` of the plane x = ``midline``."""
    x = np.asarray(points, dtype=np.float64).reshape(-1, 3)[:, 0]
    return x <= midline if side == "right" else x >= midline


def side_mask(prepared: PreparedCT, side: Side, margin_mm: float = 0.0) -> npt.NDArray[np.uint8]:
    """The lung voxels of one side lying at least ``margin_mm`` from the midline (uint8, the crop's shape)."""
    if margin_mm < 0:
        raise InputError(f"side margin_mm must be >= 0; got {margin_mm}")
    x = _voxel_x(prepared)
    middle = midline_x(prepared)
    beyond = x <= middle - margin_mm if side == "right" else x >= middle + margin_mm
    return (prepared.lung_mask.array.astype(bool) & beyond).astype(np.uint8)


def with_nodules(
    prepared: PreparedCT,
    region: npt.ArrayLike,
    count: int,
    seed: int,
    settings: InsertionSettings | None = None,
    avoid: Sequence[tuple[Sequence[float], float]] = (),
) -> tuple[PreparedCT, list[InsertedNodule]]:
    """The crop with ``count`` nodules inserted inside ``region``, which also becomes its lung mask.

    ``avoid`` lists (centre LPS mm, diameter mm) of real nodules to keep clear of. The same seed gives the same
    CT. Inserting on the prepared crop (not the scanned grid) keeps the truth exact on the grid the detector sees.
    """
    mask = np.asarray(region).astype(np.uint8)
    if mask.shape != prepared.hu.shape:
        raise InputError(f"insertion region must have the crop's shape {prepared.hu.shape}; got {mask.shape}")
    hu, nodules = insert_nodules(prepared.hu, mask, count, np.random.default_rng(seed), settings, avoid)
    return prepared.with_hu(hu, prepared.lung_mask.with_array(mask)), nodules
