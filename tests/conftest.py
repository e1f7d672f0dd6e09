"""Shared fixtures: generated DICOM series of every kind, real files from pydicom-data and ../shared/data."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests import dicom_factory as factory

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL_SHAPE = (8, 10, 6)
"""i (columns) x j (rows) x k (slices): all different, so a swapped axis cannot go unnoticed."""


# --------------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def testdata_file() -> Callable[[str], Path]:
    """Look up one named file from pydicom's test files or pydicom-data (offline, never a glob)."""
    from pydicom.data import get_testdata_file

    def lookup(name: str) -> Path:
        found = get_testdata_file(name)
        if found is None:
            pytest.skip(f"pydicom test file {name} is not installed")
        return Path(str(found))

    return lookup


@pytest.fixture(scope="session")
def dicomdir_tree(testdata_file: Callable[[str], Path]) -> Path:
    """pydicom's small multi-patient tree with several DICOMDIR variants at its root."""
    tree = Path(os.path.dirname(testdata_file("CT_small.dcm"))) / "dicomdirtests"
    if not tree.is_dir():
        pytest.skip("pydicom's dicomdirtests folder is not installed")
    return tree


@pytest.fixture(scope="session")
def dcm2niix() -> str:
    """Path of the dcm2niix executable (the pip package puts it next to the interpreter)."""
    beside_python = Path(sys.executable).parent / "dcm2niix"
    found = str(beside_python) if beside_python.exists() else shutil.which("dcm2niix")
    if found is None:
        pytest.skip("dcm2niix executable is absent")
    return found


# --------------------------------------------------------------------------------------------------
# Generated series
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def ct_series(tmp_path: Path) -> factory.WrittenSeries:
    """Axial CT, shuffled files, random InstanceNumbers, HU = stored - 1024."""
    values = factory.random_values(SMALL_SHAPE, seed=11)
    return factory.write_series(tmp_path / "ct", values, factory.axial(), modality="CT", seed=11)


@pytest.fixture
def mr_series(tmp_path: Path) -> factory.WrittenSeries:
    """Sagittal MR without Rescale tags, reversed InstanceNumbers, unsigned pixels."""
    values = factory.random_values(SMALL_SHAPE, seed=12, intercept=0.0, stored_range=(0, 2000))
    return factory.write_series(
        tmp_path / "mr", values, factory.sagittal(), modality="MR", instance_numbers="reversed", seed=12
    )


@pytest.fixture
def multiframe_ct(tmp_path: Path) -> factory.WrittenSeries:
    """The same kind of content as ``ct_series`` as one Enhanced CT object with shuffled frames."""
    values = factory.random_values(SMALL_SHAPE, seed=13)
    return factory.write_multiframe(tmp_path / "mf", values, factory.oblique(), frame_order="random", seed=13)


@pytest.fixture
def tilted_phantom(tmp_path: Path) -> factory.TiltedPhantom:
    """A sphere in a CT series with a 15 degree gantry tilt (axial IOP, sheared positions)."""
    return factory.gantry_tilted_series(tmp_path / "tilt", tilt_deg=15.0)


@dataclass(frozen=True)
class MixedFolder:
    """Two studies (three series) in nested folders plus files that are not images."""

    root: Path
    series: list[factory.WrittenSeries]
    junk: list[Path]

    def study_uids(self) -> set[str]:
        return {s.study_uid for s in self.series}


@pytest.fixture
def two_studies_with_junk(tmp_path: Path, dicomdir_tree: Path) -> MixedFolder:
    """Study A (axial CT + coronal MR) and study B (sagittal CT) plus a text file, a DICOM file cut
    inside its header and a DICOMDIR."""
    root = tmp_path / "archive"
    study_a, study_b = generate_uid(), generate_uid()
    series = [
        factory.write_series(
            root / "patient1" / "study_a" / "ct",
            factory.random_values(SMALL_SHAPE, seed=21),
            factory.axial(),
            study_uid=study_a,
            seed=21,
        ),
        factory.write_series(
            root / "patient1" / "study_a" / "mr",
            factory.random_values((6, 7, 5), seed=22, intercept=0.0, stored_range=(0, 900)),
            factory.coronal(),
            modality="MR",
            study_uid=study_a,
            seed=22,
        ),
        factory.write_series(
            root / "patient1" / "study_b",
            factory.random_values((9, 8, 4), seed=23),
            factory.sagittal(),
            study_uid=study_b,
            file_names="bare",
            seed=23,
        ),
    ]
    junk = [
        factory.write_text_file(root / "notes.txt"),
        factory.truncate_copy(series[0].files[0], root / "patient1" / "cut_in_header.dcm", keep_bytes=400),
        factory.copy_into(dicomdir_tree / "DICOMDIR", root),
    ]
    return MixedFolder(root=root, series=series, junk=junk)
