"""Per-case overlap and surface metrics of binary masks and label maps, in millimetres.

The surface of a mask is the set of its voxels that a binary erosion (face connectivity, outside counted
as background) removes: the definition MONAI's ``get_mask_edges`` uses when no sub-voxel areas are
asked for. Distances go from surface voxel centres to the nearest surface voxel centre of the other
mask, computed with an exact Euclidean distance transform in the given spacing, so HD95 and surface Dice
equal MONAI's ``compute_hausdorff_distance(percentile=95)`` and ``compute_surface_dice`` (MONAI works in
float32, so they agree to about 1e-6 relative). Everything runs inside the bounding box of
``prediction | reference`` plus a margin, which keeps large CT volumes cheap.

Empty masks, where MONAI returns nan or inf, get fixed conventions here (see each function); a value
that cannot be defined is nan so summaries count it as missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

CROP_MARGIN = 1
"""Voxels kept around the bounding box; outside it both masks are background, so results do not change."""


@dataclass(frozen=True)
class ClassMetrics:
    """The metrics of one class in one case, with the voxel counts that explain the empty-mask conventions."""

    dice: float
    hd95: float
    surface_dice: float
    prediction_voxels: int
    reference_voxels: int

    @property
    def prediction_empty(self) -> bool:
        return self.prediction_voxels == 0

    @property
    def reference_empty(self) -> bool:
        return self.reference_voxels == 0


def _masks(prediction: npt.ArrayLike, reference: npt.ArrayLike) -> tuple[BoolArray, BoolArray]:
    pred = np.asarray(prediction).astype(bool, copy=False)
    ref = np.asarray(reference).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return pred, ref


def _spacing(spacing: Sequence[float] | npt.ArrayLike, ndim: int) -> FloatArray:
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be {ndim} positive numbers (mm), got {np.asarray(spacing).tolist()}")
    return values


def _check_tolerance(tolerance_mm: float) -> None:
    if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")


def _crop(pred: BoolArray, ref: BoolArray) -> tuple[BoolArray, BoolArray] | None:
    """Both masks cut to the bounding box of their union plus a margin; None when both are empty."""
    union = pred | ref
    if not union.any():
        return None
    box = ndimage.find_objects(union.astype(np.uint8))[0]
    assert box is not None
    window = tuple(
        slice(max(s.start - CROP_MARGIN, 0), min(s.stop + CROP_MARGIN, size))
        for s, size in zip(box, union.shape, strict=True)
    )
    return pred[window], ref[window]


def surface(mask: BoolArray) -> BoolArray:
    """Voxels of ``mask`` with a face neighbour outside it (the image border counts as outside)."""
    return np.asarray(mask & ~ndimage.binary_erosion(mask, border_value=0), dtype=np.bool_)


def _surface_distances(pred: BoolArray, ref: BoolArray, spacing: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Distances (mm) from each prediction surface voxel to the reference surface, and the other way."""
    pred_surface, ref_surface = surface(pred), surface(ref)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return np.asarray(to_ref[pred_surface], dtype=np.float64), np.asarray(to_pred[ref_surface], dtype=np.float64)


def _dice(pred: BoolArray, ref: BoolArray) -> float:
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def _hd(forward: FloatArray, backward: FloatArray, percentile: float) -> float:
    return float(max(np.percentile(forward, percentile), np.percentile(backward, percentile)))


def _nsd(forward: FloatArray, backward: FloatArray, tolerance_mm: float) -> float:
    correct = int(np.count_nonzero(forward <= tolerance_mm)) + int(np.count_nonzero(backward <= tolerance_mm))
    return correct / (forward.size + backward.size)


def dice(prediction_mask: npt.ArrayLike, reference_mask: npt.ArrayLike) -> float:
    """Dice coefficient 2|P∩R| / (|P|+|R|) of two binary masks (non-zero is foreground).

    Both empty gives 1.0: a class correctly predicted absent is a perfect answer (MONAI's
    ``compute_dice(ignore_empty=False)``; with its default ``ignore_empty=True`` MONAI gives nan).
    One empty gives 0.0.
    """
    pred, ref = _masks(prediction_mask, reference_mask)
    return _dice(pred, ref)


def hausdorff95(
    prediction_mask: npt.ArrayLike,
    reference_mask: npt.ArrayLike,
    spacing: Sequence[float] | npt.ArrayLike,
    percentile: float = 95.0,
) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the mask surfaces, in mm.

    As MONAI: the maximum of the two directed percentiles (linear interpolation), not the percentile of
    the pooled distances. Both masks empty gives 0.0 (nothing to be wrong about; MONAI gives nan). One
    empty gives nan, because no finite distance is meaningful (MONAI gives inf); summaries count it as
    missing and the evaluation reports it in an 'empty prediction' column.
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    pred, ref = _masks(prediction_mask, reference_mask)
    cropped = _crop(pred, ref)
    if cropped is None:
        return 0.0
    if not pred.any() or not ref.any():
        return math.nan
    forward, backward = _surface_distances(*cropped, _spacing(spacing, pred.ndim))
    return _hd(forward, backward, percentile)


def surface_dice(
    prediction_mask: npt.ArrayLike,
    reference_mask: npt.ArrayLike,
    spacing: Sequence[float] | npt.ArrayLike,
    tolerance_mm: float,
) -> float:
    """Normalised surface Dice (Nikolov et al. 2021): share of both surfaces within ``tolerance_mm`` of the other.

    Counted per surface voxel, as MONAI's ``compute_surface_dice(use_subvoxels=False)``. Both empty gives
    1.0, as Dice (MONAI gives nan); one empty gives 0.0 (as MONAI).
    """
    _check_tolerance(tolerance_mm)
    pred, ref = _masks(prediction_mask, reference_mask)
    cropped = _crop(pred, ref)
    if cropped is None:
        return 1.0
    if not pred.any() or not ref.any():
        return 0.0
    forward, backward = _surface_distances(*cropped, _spacing(spacing, pred.ndim))
    return _nsd(forward, backward, tolerance_mm)


def binary_metrics(
    prediction_mask: npt.ArrayLike,
    reference_mask: npt.ArrayLike,
    spacing: Sequence[float] | npt.ArrayLike,
    tolerance_mm: float,
) -> ClassMetrics:
    """Dice, HD95 and surface Dice of one mask pair, sharing one crop and one pair of distance transforms."""
    _check_tolerance(tolerance_mm)
    pred, ref = _masks(prediction_mask, reference_mask)
    sampling = _spacing(spacing, pred.ndim)
    counts = {"prediction_voxels": int(pred.sum()), "reference_voxels": int(ref.sum())}
    cropped = _crop(pred, ref)
    if cropped is None:
        return ClassMetrics(dice=1.0, hd95=0.0, surface_dice=1.0, **counts)
    if counts["prediction_voxels"] == 0 or counts["reference_voxels"] == 0:
        return ClassMetrics(dice=0.0, hd95=math.nan, surface_dice=0.0, **counts)
    forward, backward = _surface_distances(*cropped, sampling)
    return ClassMetrics(
        dice=_dice(*cropped),
        hd95=_hd(forward, backward, 95.0),
        surface_dice=_nsd(forward, backward, tolerance_mm),
        **counts,
    )


def per_class_metrics(
    prediction_labels: npt.NDArray[Any],
    reference_labels: npt.NDArray[Any],
    classes: Iterable[int],
    spacing: Sequence[float] | npt.ArrayLike,
    tolerance_mm: float = 1.0,
) -> dict[int, ClassMetrics]:
    """Metrics of each class of two label maps on the same grid (class ``c`` is ``labels == c``)."""
    if prediction_labels.shape != reference_labels.shape:
        raise ValueError(f"prediction shape {prediction_labels.shape} differs from reference {reference_labels.shape}")
    return {
        int(c): binary_metrics(prediction_labels == c, reference_labels == c, spacing, tolerance_mm) for c in classes
    }
