"""From model-space probabilities to the label map on the input grid: sampling back, the argmax, the
post-processing chosen per class by cross-validation, and the output file name. numpy and scipy only.

Split from ``predict`` so that the ONNX Runtime backend (``vesalius.deploy.runtime``) applies the same rule
without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from vesalius.core.volume import Volume
from vesalius.io.nifti import is_nifti
from vesalius.transforms import invert

__all__ = ["channels_first", "input_grid_labels", "keep_largest_component", "output_name", "to_input_grid"]


def keep_largest_component(labels: npt.NDArray[Any], classes: Sequence[int]) -> npt.NDArray[Any]:
    """Set all but the largest connected component (26-connectivity) of each listed class to background."""
    result = labels.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in classes:
        components, count = ndimage.label(labels == value, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        result[(components != 0) & (components != int(np.argmax(sizes)))] = 0
    return result


def output_name(source: Path) -> str:
    """NIfTI inputs keep their file name; DICOM folders and other formats become ``<name>.nii.gz``."""
    if source.is_file() and is_nifti(source):
        return source.name
    if source.is_dir():
        return f"{source.name}.nii.gz"
    return f"{source.name.split('.')[0]}.nii.gz"


def channels_first(prepared: Volume) -> npt.NDArray[np.float32]:
    """A preprocessed (i, j, k, C) image as the network's (C, i, j, k) input."""
    return np.ascontiguousarray(np.moveaxis(prepared.array, -1, 0), dtype=np.float32)


def to_input_grid(prepared: Volume, volume: Volume, model_space: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """A map on ``prepared``'s (model-space) grid sampled back linearly onto ``volume``'s grid, undoing only
    the steps preprocessing added to ``volume``'s history."""
    steps = len(prepared.history) - len(volume.history)
    back = invert(prepared.with_array(model_space), kind="label", interpolation="linear", steps=steps)
    return np.asarray(back.array, dtype=np.float32)


def input_grid_labels(
    volume: Volume, channels: Iterable[npt.NDArray[np.float32]], num_classes: int, postprocessing: Mapping[int, bool]
) -> Volume:
    """The argmax of per-class maps given one at a time (ties keep the lower class, as argmax does), then
    the largest-component rule for the classes ``postprocessing`` keeps; on ``volume``'s grid."""
    best: npt.NDArray[np.float32] | None = None
    labels = np.zeros(volume.shape, dtype=np.uint8 if num_classes <= 256 else np.int16)
    for index, channel in enumerate(channels):
        if best is None:
            best = channel
            continue
        better = channel > best
        labels[better] = index
        np.maximum(best, channel, out=best)
    kept = [c for c, keep in sorted(postprocessing.items()) if keep]
    return volume.with_array(keep_largest_component(labels, kept) if kept else labels)
