"""Post-processing of a segmentation label map, chosen per class by cross-validation, and the output file name:
numpy and scipy only.

Split from ``predict`` so that the ONNX Runtime backend (``vesalius.deploy.runtime``) applies the same rule
without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from vesalius.io.nifti import is_nifti

__all__ = ["keep_largest_component", "output_name"]


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
