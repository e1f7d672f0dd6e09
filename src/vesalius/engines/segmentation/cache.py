"""A disk cache of preprocessed cases, so cross-validation and the final training resample each case once.

Key: SHA-256 over what preprocessing depends on (the plan's target spacing and normalisation) and over each
source file's name, size and modification time (a DICOM folder: every file in it). A changed plan or an
edited file gives a new key, so a stale entry is never read. Entries are ``.npy`` pairs written to a
temporary name and renamed, so an interrupted run leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vesalius.engines.common.dataset import Case, SegmentationDataset, load_case
from vesalius.engines.common.plan import SegmentationPlan
from vesalius.engines.segmentation.preprocess import preprocess_case

__all__ = ["cache_key", "preprocessed_arrays"]


def _file_stamps(path: Path) -> list[tuple[str, int, int]]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(f.relative_to(path.parent)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def cache_key(case: Case, plan: SegmentationPlan) -> str:
    """Changes whenever the preprocessed arrays could."""
    recipe = {
        "spacing": list(plan.target_spacing),
        "normalization": [n.model_dump() for n in plan.normalization],
        "files": [_file_stamps(p) for p in (*case.images, case.label)],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]


def _save(array: npt.NDArray[Any], target: Path) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        np.save(handle, array)
    temporary.replace(target)


def preprocessed_arrays(
    dataset: SegmentationDataset, case: Case, plan: SegmentationPlan, cache_dir: Path | None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    """The case's image (i, j, k, c) and label (i, j, k) on the plan's grid, from the cache when present."""
    if cache_dir is None:
        image, label = preprocess_case(load_case(dataset, case), plan)
        return image.array, label.array
    entry = cache_dir / f"{case.case_id}.{cache_key(case, plan)}"
    image_file, label_file = entry.with_name(entry.name + ".image.npy"), entry.with_name(entry.name + ".label.npy")
    if image_file.is_file() and label_file.is_file():
        return np.load(image_file), np.load(label_file)
    image, label = preprocess_case(load_case(dataset, case), plan)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _save(label.array, label_file)
    _save(image.array, image_file)  # written last: its presence means the entry is whole
    return image.array, label.array
