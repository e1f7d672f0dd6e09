"""Mapping a result computed in model space back onto the grid the data came from.

``invert`` walks ``volume.history`` from the newest record to the oldest and undoes each one: crops become
pads, pads become crops, reorientations are reversed exactly, resamplings sample back onto the recorded
source grid. The result lies on the first undone record's ``source_shape`` and ``source_affine``,
bit for bit, which is the property that keeps predictions aligned with the scan they came from.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import TransformError
from vesalius.core.volume import AppliedTransform, Volume
from vesalius.transforms._common import Interpolation, spline_order
from vesalius.transforms._sampling import inside_mask, sample
from vesalius.transforms.crop_pad import crop_array, pad_array
from vesalius.transforms.intensity import INTENSITY_TRANSFORMS, invert_intensity
from vesalius.transforms.orientation import unreorient_array

Kind = Literal["label", "image"]

_CROPS = frozenset({"crop", "crop_to_foreground"})
_RESAMPLES = frozenset({"resample", "resample_to_grid"})
INVERTIBLE = INTENSITY_TRANSFORMS | _CROPS | _RESAMPLES | {"pad", "to_canonical"}
"""Names of the records ``invert`` knows how to undo."""

Mask = npt.NDArray[np.bool_]


def _output_shape(record: AppliedTransform) -> tuple[int, ...]:
    """The spatial shape the recorded transform produced, to catch an array that is not its output."""
    params, source = record.params, record.source_shape
    if record.name in INTENSITY_TRANSFORMS:
        return tuple(source)
    if record.name in _CROPS:
        return tuple(b - a for a, b in zip(params["start"], params["stop"], strict=True))
    if record.name == "pad":
        return tuple(n + b + a for n, b, a in zip(source, params["before"], params["after"], strict=True))
    if record.name == "to_canonical":
        return tuple(source[axis] for axis in params["perm"])
    return tuple(params["shape"])


def _undo_spatial(
    record: AppliedTransform,
    array: npt.NDArray[Any],
    covered: Mask | None,
    affine: npt.NDArray[np.float64],
    order: int,
) -> tuple[npt.NDArray[Any], Mask | None]:
    """Undo one grid-changing record; ``covered`` tracks which voxels still hold model output."""
    params, source_shape = record.params, record.source_shape
    if record.name in _CROPS:
        before = params["start"]
        after = [n - b for n, b in zip(source_shape, params["stop"], strict=True)]
        kept = np.ones(array.shape[:3], dtype=bool) if covered is None else covered
        # edge values, not a constant, so a later linear resampling does not blend a placeholder into the
        # border voxels; the uncovered ones get ``fill`` at the end
        return pad_array(array, before, after, mode="edge"), pad_array(kept, before, after, value=False)
    if record.name == "pad":
        start = params["before"]
        stop = [b + n for b, n in zip(start, source_shape, strict=True)]
        if covered is not None:
            covered = crop_array(covered, start, stop)
        return crop_array(array, start, stop), covered
    if record.name == "to_canonical":
        perm, flips = params["perm"], params["flips"]
        if covered is not None:
            covered = unreorient_array(covered, perm, flips)
        return unreorient_array(array, perm, flips), covered
    # resample or resample_to_grid: sample back onto the recorded source grid
    target = (source_shape[0], source_shape[1], source_shape[2])
    restored = sample(array, affine, target, record.source_affine, order, fill=None)
    if covered is not None:
        fill = 0.0 if record.name == "resample_to_grid" else None
        covered = sample(covered, affine, target, record.source_affine, 0, fill=fill)
    elif record.name == "resample_to_grid":
        covered = inside_mask(array.shape[:3], affine, target, record.source_affine)
    return restored, covered


def _records_to_undo(
    volume: Volume, steps: int | None
) -> tuple[tuple[AppliedTransform, ...], tuple[AppliedTransform, ...]]:
    """Split the history into (kept, undone) and check that every undone record is understood."""
    history = volume.history
    if not history:
        raise TransformError(
            "invert: the volume has no transform history; build the prediction with "
            "model_space_volume.with_array(array) so it carries the transforms to undo"
        )
    count = len(history) if steps is None else steps
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(history):
        raise TransformError(f"invert: steps must be an integer from 1 to {len(history)}; got {steps!r}")
    kept, undone = history[: len(history) - count], history[len(history) - count :]
    unknown = [record.name for record in undone if record.name not in INVERTIBLE]
    if unknown:
        raise TransformError(
            f"invert: cannot undo {', '.join(repr(n) for n in unknown)}; it knows {', '.join(sorted(INVERTIBLE))}"
        )
    return kept, undone


def invert(
    volume: Volume,
    kind: Kind = "label",
    interpolation: Interpolation | None = None,
    steps: int | None = None,
    fill: float = 0.0,
) -> Volume:
    """Bring a model-space result back to the original grid, e.g. ``invert(image.with_array(mask))``.

    ``kind="label"`` skips intensity records (a mask has no HU to restore) and samples with nearest
    neighbour, so labels keep their values; ``kind="image"`` also undoes intensity transforms and samples
    linearly. ``interpolation`` overrides the sampling (use ``kind="label", interpolation="linear"`` for
    probability maps). ``steps`` undoes only the newest ``steps`` records; the result then keeps the older
    ones as its history, otherwise its history is empty. Voxels of the original grid that the model grid
    never covered (outside a crop, or outside a ``resample_to_grid`` target) are set to ``fill``.
    """
    if kind not in ("label", "image"):
        raise TransformError(f"invert: kind must be 'label' or 'image'; got {kind!r}")
    order = spline_order(interpolation or ("nearest" if kind == "label" else "linear"))
    kept, undone = _records_to_undo(volume, steps)
    array: npt.NDArray[Any] = volume.array
    affine = volume.affine
    covered: Mask | None = None
    for record in reversed(undone):
        expected = _output_shape(record)
        if array.shape[:3] != expected:
            raise TransformError(
                f"invert: array has spatial shape {array.shape[:3]} but {record.name!r} produced {expected}; "
                "was the array replaced without with_array, or the history edited?"
            )
        if record.name in INTENSITY_TRANSFORMS:
            if kind == "image":
                array = invert_intensity(array, record)
        else:
            array, covered = _undo_spatial(record, array, covered, affine, order)
        affine = record.source_affine
    if array is volume.array:
        array = array.copy()  # only skipped records: still hand back a volume of its own
    if covered is not None:
        if array.dtype.kind in "biu" and not float(fill).is_integer():
            raise TransformError(f"invert: fill {fill} cannot be stored in the result's {array.dtype} voxels")
        array[~covered] = fill
    return volume.evolve(array=array, affine=np.array(undone[0].source_affine), history=kept)
