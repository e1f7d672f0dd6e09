"""Nodules as detector boxes and detector boxes as nodules: the one place the two coordinate systems meet.

A box is MONAI's ``StandardMode`` (xmin, ymin, zmin, xmax, ymax, zmax) along the crop's array axes (i, j, k), in
continuous voxel indices of the ``PreparedCT`` crop (voxel (i, j, k)'s centre is at (i, j, k)), as MONAI's
``AffineBoxToImageCoordinate`` makes them. A nodule of diameter d mm centred at world point c is the box
centred at ``prepared.world_to_index(c)`` with edge d / spacing along each axis (the crop's axes are the
patient's, permuted, so the sphere's bounding box is axis-aligned); a detected box maps back through its
centre, and its diameter is the mean of its edges in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from monai.data.box_utils import non_max_suppression

from vesalius.core.errors import InputError
from vesalius.engines.common.metrics.froc import Candidate
from vesalius.engines.detection.preprocess import PreparedCT

FloatArray = npt.NDArray[np.float64]

__all__ = [
    "Detection",
    "NoduleLike",
    "boxes_to_detections",
    "clip_boxes",
    "flip_boxes",
    "nms",
    "nodule_boxes",
    "to_candidates",
]


class NoduleLike(Protocol):
    """Anything with a world centre (LPS mm) and a diameter: ``Nodule``, ``InsertedNodule``, ``Detection``."""

    @property
    def centre(self) -> tuple[float, float, float]: ...

    @property
    def diameter_mm(self) -> float: ...


@dataclass(frozen=True)
class Detection:
    """One detected candidate in patient space."""

    centre: tuple[float, float, float]
    """LPS mm."""
    diameter_mm: float
    probability: float


def _spacing(prepared: PreparedCT) -> FloatArray:
    return np.asarray(prepared.image.spacing, dtype=np.float64)


def nodule_boxes(prepared: PreparedCT, nodules: Sequence[NoduleLike]) -> FloatArray:
    """Boxes (N, 6) in crop voxels of the nodules, for training targets."""
    if not nodules:
        return np.zeros((0, 6), dtype=np.float64)
    centres = np.array([n.centre for n in nodules], dtype=np.float64)
    diameters = np.array([n.diameter_mm for n in nodules], dtype=np.float64)
    if not np.all(np.isfinite(centres)) or not np.all(diameters > 0):
        raise InputError(f"nodule boxes need finite centres and positive diameters; got diameters {diameters}")
    middle = prepared.world_to_index(centres)
    half = diameters[:, None] / _spacing(prepared)[None, :] / 2.0
    return np.concatenate([middle - half, middle + half], axis=1)


def boxes_to_detections(
    prepared: PreparedCT, boxes: npt.ArrayLike, scores: npt.ArrayLike, offset: Sequence[float] = (0.0, 0.0, 0.0)
) -> list[Detection]:
    """Detections in LPS mm from boxes (N, 6) in crop voxels (or in a patch starting at crop index ``offset``),
    most probable first."""
    values = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    probabilities = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(values) != len(probabilities):
        raise InputError(f"{len(values)} boxes but {len(probabilities)} scores: one score per box")
    middle = (values[:, :3] + values[:, 3:]) / 2.0 + np.asarray(offset, dtype=np.float64)[None, :]
    centres = prepared.index_to_world(middle)
    diameters = ((values[:, 3:] - values[:, :3]) * _spacing(prepared)[None, :]).mean(axis=1)
    order = np.argsort(-probabilities, kind="stable")
    return [
        Detection(
            centre=(float(centres[n, 0]), float(centres[n, 1]), float(centres[n, 2])),
            diameter_mm=float(diameters[n]),
            probability=float(probabilities[n]),
        )
        for n in order
    ]


def to_candidates(scan: str, detections: Sequence[Detection]) -> list[Candidate]:
    """The detections as FROC candidates of one scan."""
    return [Candidate(scan=scan, centre=d.centre, probability=d.probability) for d in detections]


def nms(boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float, max_keep: int = -1) -> npt.NDArray[np.int64]:
    """Indices of the boxes 3-D non-maximum suppression keeps, most probable first (MONAI's NMS)."""
    values = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 6))
    probabilities = torch.as_tensor(np.asarray(scores, dtype=np.float32).reshape(-1))
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    kept = non_max_suppression(values, probabilities, iou_threshold, max_proposals=max_keep)
    return np.asarray(torch.as_tensor(kept).cpu().numpy(), dtype=np.int64)


def flip_boxes(boxes: FloatArray, shape: Sequence[int], axes: Sequence[int]) -> FloatArray:
    """The boxes of an image of ``shape`` flipped along ``axes`` (index i goes to size - 1 - i)."""
    flipped = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 6)
    for axis in axes:
        low, high = flipped[:, axis].copy(), flipped[:, axis + 3].copy()
        flipped[:, axis] = shape[axis] - 1 - high
        flipped[:, axis + 3] = shape[axis] - 1 - low
    return flipped


def clip_boxes(boxes: FloatArray, shape: Sequence[int]) -> FloatArray:
    """Boxes whose centre lies in an image of ``shape``, clipped to its extent (half a voxel beyond the edge
    centres); boxes centred outside are dropped."""
    values = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    low = np.full(3, -0.5)
    high = np.asarray(shape, dtype=np.float64) - 0.5
    middle = (values[:, :3] + values[:, 3:]) / 2.0
    inside = np.all((middle >= low) & (middle < high), axis=1)
    kept = values[inside]
    return np.concatenate([np.maximum(kept[:, :3], low), np.minimum(kept[:, 3:], high)], axis=1)
