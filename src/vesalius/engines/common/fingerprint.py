"""The dataset fingerprint: what planning needs to know about a dataset, computed once and hashed.

Geometry (spacing and shape per case, as stored, i/j/k order), foreground intensity statistics per channel
from a seeded sample of foreground voxels (so two runs give identical numbers), and label voxel counts.
The content hash identifies the data a model was planned and trained on without storing any paths.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from vesalius.core.errors import DatasetError
from vesalius.engines.common.dataset import Case, SegmentationDataset, load_case

FINGERPRINT_VERSION = 1

Triple = tuple[float, float, float]
Shape = tuple[int, int, int]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntensityStats(_Model):
    """Foreground intensities of one channel, pooled over the sampled voxels of every case."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float = Field(description="0.5th percentile: the lower CT clip")
    percentile_99_5: float = Field(description="99.5th percentile: the upper CT clip")
    num_samples: int = Field(description="Foreground voxels sampled over all cases")


class CaseFingerprint(_Model):
    """One case as stored (no resampling)."""

    case_id: str
    spacing: Triple = Field(description="mm along i, j, k")
    shape: Shape = Field(description="voxels along i, j, k")
    label_voxels: dict[int, int] = Field(description="voxel count per label value present")
    file_bytes: int = Field(description="Total size of the case's image and label files")


class LabelStats(_Model):
    """How much of the dataset one class covers."""

    name: str
    voxels: int
    fraction: float = Field(description="Share of all voxels of all cases")
    cases_present: int = Field(description="Cases in which the class has at least one voxel")


class DatasetFingerprint(_Model):
    """Everything the planner reads; cases are sorted by id so the hash does not depend on listing order."""

    fingerprint_version: int = FINGERPRINT_VERSION
    dataset_name: str
    modalities: list[str]
    labels: dict[int, str]
    cases: list[CaseFingerprint]
    intensity: list[IntensityStats] = Field(description="One entry per input channel")
    label_stats: dict[int, LabelStats]
    median_spacing: Triple
    median_shape: Triple
    content_hash: str = Field(description="sha256 over the fields above, file sizes included, paths excluded")

    @property
    def spacings(self) -> npt.NDArray[np.float64]:
        """(cases, 3) spacing in mm."""
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes(self) -> npt.NDArray[np.float64]:
        """(cases, 3) shape in voxels."""
        return np.array([c.shape for c in self.cases], dtype=np.float64)


def _case_seed(seed: int, case_id: str) -> list[int]:
    """A per-case seed that depends on the case, not on its position or on the worker that reads it."""
    return [seed, zlib.crc32(case_id.encode("utf-8"))]


def _bytes(path: Path) -> int:
    """A file's size, or the total size of the files of a DICOM series folder."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _fingerprint_case(
    dataset: SegmentationDataset, case: Case, max_samples: int, seed: int
) -> tuple[CaseFingerprint, npt.NDArray[np.float32]]:
    """Geometry, label counts and a (samples, channels) foreground sample of one case."""
    loaded = load_case(dataset, case)
    label = loaded.label.array
    values, counts = np.unique(label, return_counts=True)
    foreground = np.flatnonzero(label > 0)
    if foreground.size > max_samples:
        rng = np.random.default_rng(_case_seed(seed, case.case_id))
        foreground = np.sort(rng.choice(foreground, size=max_samples, replace=False))
    image = loaded.image.array.reshape(-1, loaded.image.array.shape[-1])
    sample = np.asarray(image[foreground], dtype=np.float32)
    size = sum(_bytes(p) for p in (*case.images, case.label))
    spacing = loaded.image.spacing
    record = CaseFingerprint(
        case_id=case.case_id,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        shape=loaded.image.shape,
        label_voxels={int(v): int(n) for v, n in zip(values, counts, strict=True)},
        file_bytes=int(size),
    )
    return record, sample


def intensity_stats(values: npt.NDArray[np.floating[Any]]) -> IntensityStats:
    """Statistics of a 1-D sample; percentiles use numpy's default linear interpolation."""
    data = np.asarray(values, dtype=np.float64)
    low, median, high = np.percentile(data, [0.5, 50.0, 99.5])
    return IntensityStats(
        mean=float(data.mean()),
        std=float(data.std()),
        median=float(median),
        min=float(data.min()),
        max=float(data.max()),
        percentile_00_5=float(low),
        percentile_99_5=float(high),
        num_samples=int(data.size),
    )


def _label_stats(dataset: SegmentationDataset, cases: list[CaseFingerprint]) -> dict[int, LabelStats]:
    total = sum(int(np.prod(c.shape)) for c in cases)
    stats: dict[int, LabelStats] = {}
    for value, name in sorted(dataset.labels.items()):
        voxels = sum(c.label_voxels.get(value, 0) for c in cases)
        present = sum(1 for c in cases if c.label_voxels.get(value, 0) > 0)
        stats[value] = LabelStats(name=name, voxels=voxels, fraction=voxels / total, cases_present=present)
    return stats


def _content_hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _median3(rows: npt.NDArray[np.float64]) -> Triple:
    median = np.median(rows, axis=0)
    return (float(median[0]), float(median[1]), float(median[2]))


def compute_fingerprint(
    dataset: SegmentationDataset, workers: int = 1, max_foreground_samples: int = 10_000, seed: int = 0
) -> DatasetFingerprint:
    """Read every case once (in ``workers`` processes when > 1) and summarise it; deterministic for a seed.

    At most ``max_foreground_samples`` foreground voxels per case enter the intensity statistics, as in
    nnU-Net, so that large cases do not dominate and memory stays bounded.
    """
    cases = sorted(dataset.cases, key=lambda c: c.case_id)
    n = len(cases)
    args = ([dataset] * n, cases, [max_foreground_samples] * n, [seed] * n)
    results: Iterable[tuple[CaseFingerprint, npt.NDArray[np.float32]]]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_fingerprint_case, *args, chunksize=max(1, n // (4 * workers))))
    else:
        results = [_fingerprint_case(*a) for a in zip(*args, strict=True)]
    records = [r for r, _ in results]
    samples = np.concatenate([s for _, s in results], axis=0)
    if samples.shape[0] == 0:
        raise DatasetError(f"{dataset.root}: no label holds a foreground voxel (value > 0); nothing to learn")
    fields: dict[str, Any] = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "dataset_name": dataset.name,
        "modalities": list(dataset.modalities),
        "labels": dict(dataset.labels),
        "cases": records,
        "intensity": [intensity_stats(samples[:, c]) for c in range(samples.shape[1])],
        "label_stats": _label_stats(dataset, records),
        "median_spacing": _median3(np.array([r.spacing for r in records])),
        "median_shape": _median3(np.array([r.shape for r in records], dtype=np.float64)),
    }
    payload = DatasetFingerprint.model_validate({**fields, "content_hash": ""}).model_dump(
        mode="json", exclude={"content_hash"}
    )
    return DatasetFingerprint.model_validate({**fields, "content_hash": _content_hash(payload)})
