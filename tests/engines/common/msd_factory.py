"""Small Medical Segmentation Decathlon folders written with nibabel, with known geometry and voxels."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt


@dataclass
class FakeCase:
    """One case to write; ``label_spacing`` differs from ``spacing`` only to provoke a grid mismatch."""

    case_id: str
    image: npt.NDArray[Any]
    label: npt.NDArray[Any]
    spacing: Sequence[float] = (1.0, 1.0, 1.0)
    label_spacing: Sequence[float] | None = None


def blob_case(case_id: str, shape: Sequence[int], spacing: Sequence[float], seed: int = 0) -> FakeCase:
    """A noisy image with a box of label 1 in the middle and a smaller box of label 2 inside it."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 10.0, size=tuple(shape)).astype(np.float32)
    label = np.zeros(tuple(shape), dtype=np.uint8)
    centre = [s // 2 for s in shape]
    outer = tuple(slice(max(c - max(s // 4, 1), 0), c + max(s // 4, 1)) for c, s in zip(centre, shape, strict=True))
    inner = tuple(slice(c, c + 1) for c in centre)
    label[outer] = 1
    label[inner] = 2
    image[label > 0] += 50.0
    return FakeCase(case_id, image, label, spacing)


def _save(array: npt.NDArray[Any], spacing: Sequence[float], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)


def write_msd(
    root: Path,
    cases: Sequence[FakeCase],
    modality: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Write dataset.json, imagesTr/ and labelsTr/ under ``root`` and return ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    training = []
    for case in cases:
        _save(case.image, case.spacing, root / "imagesTr" / f"{case.case_id}.nii.gz")
        _save(case.label, case.label_spacing or case.spacing, root / "labelsTr" / f"{case.case_id}.nii.gz")
        training.append({"image": f"./imagesTr/{case.case_id}.nii.gz", "label": f"./labelsTr/{case.case_id}.nii.gz"})
    content = {
        "name": "Fake",
        "modality": dict(modality or {"0": "MRI"}),
        "labels": dict(labels or {"0": "background", "1": "outer", "2": "inner"}),
        "numTraining": len(cases),
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(content, indent=2))
    return root
