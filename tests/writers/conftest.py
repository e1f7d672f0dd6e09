"""Fixtures for the writers: a small CT series on disk, its datasets, results on its grid, and dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests import dicom_factory as factory
from tests.http_server import fhir_server  # noqa: F401 (a fixture, offered to the FHIR tests here)
from vesalius.core.results import ModelIdentity, SegmentationResult
from vesalius.core.volume import DicomIdentity, Volume

SHAPE = (32, 28, 8)
"""i (columns) x j (rows) x k (slices): i and j differ, so a transposed frame cannot go unnoticed."""
DCIODVFY = Path("/usr/bin/dciodvfy")


@dataclass(frozen=True)
class CtCase:
    series: factory.WrittenSeries
    datasets: list[pydicom.Dataset]
    """Read back from disk, in file-system (shuffled) order, not k order."""


def model(sha256: str = "a" * 64, name: str = "toy-model", version: str = "1.2.0") -> ModelIdentity:
    return ModelIdentity(name=name, version=version, sha256=sha256, task="segmentation")


@pytest.fixture
def ct(tmp_path: Path) -> CtCase:
    """An 8-slice 32 x 28 axial CT series written in random order."""
    written = factory.write_series(
        tmp_path / "ct", factory.random_values(SHAPE, seed=3), factory.axial(spacing=(0.7, 0.8, 2.5))
    )
    datasets = [pydicom.dcmread(path) for path in sorted(written.folder.glob("*.dcm"))]
    return CtCase(written, datasets)


def label_volume(series: factory.WrittenSeries, labels: np.ndarray, *, with_uids: bool = True) -> Volume:
    identity = DicomIdentity(
        study_instance_uid=series.study_uid,
        series_instance_uid=series.series_uid,
        frame_of_reference_uid=series.identity.frame_of_reference_uid,
        sop_instance_uids=tuple(series.sop_instance_uids) if with_uids else (),
    )
    return Volume(array=labels, affine=series.affine, modality="CT", identity=identity)


def two_labels() -> np.ndarray:
    """Label 1 ("liver") a box over slices 2..4, label 3 ("nodule") a small block on slice 6 only."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:10, 5:12, 2:5] = 1
    labels[20:25, 18:26, 6] = 3
    return labels


@pytest.fixture
def segmentation(ct: CtCase) -> SegmentationResult:
    return SegmentationResult(label_volume(ct.series, two_labels()), {1: "liver", 3: "nodule"}, model())


def dciodvfy_errors(path: Path, timeout_s: float = 60.0) -> list[str]:
    """The lines of dciodvfy's report that contain "Error" (warnings are accepted); skips when it is absent."""
    if not DCIODVFY.exists() and shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed at /usr/bin/dciodvfy")
    run = subprocess.run(
        [str(DCIODVFY if DCIODVFY.exists() else "dciodvfy"), str(path)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    report = run.stdout + run.stderr
    return [line for line in report.splitlines() if "Error" in line]
