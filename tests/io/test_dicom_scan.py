"""scan: find every study and series under a folder, describe each, and list what was skipped and why.

Scanning never raises for a bad file or a bad series: it reports them (``skipped`` / ``problems``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests import dicom_factory as factory
from tests.conftest import SMALL_SHAPE, MixedFolder
from tests.io import peers
from vesalius.io.dicom import scan


def test_scan_describes_one_series(ct_series: factory.WrittenSeries) -> None:
    report = scan(ct_series.folder)
    studies = peers.listed(report.studies)
    assert [study.study_instance_uid for study in studies] == [ct_series.study_uid]
    (series,) = peers.all_series(report)
    assert series.series_instance_uid == ct_series.series_uid
    assert series.modality == "CT"
    assert peers.resolved(series.files) == peers.resolved(ct_series.files)
    assert tuple(series.shape) == SMALL_SHAPE
    np.testing.assert_allclose(series.spacing, [0.7, 0.8, 2.5], atol=1e-6)
    assert series.orientation == "LPS"
    assert list(series.problems) == []
    assert list(report.skipped) == []


@pytest.mark.parametrize(
    ("make_affine", "code"), [(factory.axial, "LPS"), (factory.coronal, "LIP"), (factory.sagittal, "PIR")]
)
def test_scan_reports_orientation_codes(tmp_path: Path, make_affine: Callable[[], np.ndarray], code: str) -> None:
    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), make_affine())
    (series,) = peers.all_series(scan(tmp_path))
    assert series.orientation == code


def test_scan_describes_a_multiframe_object(multiframe_ct: factory.WrittenSeries) -> None:
    (series,) = peers.all_series(scan(multiframe_ct.folder))
    assert series.series_instance_uid == multiframe_ct.series_uid
    assert tuple(series.shape) == SMALL_SHAPE
    assert peers.resolved(series.files) == peers.resolved(multiframe_ct.files)


def test_two_studies_and_junk_are_sorted_out(two_studies_with_junk: MixedFolder) -> None:
    """Nested folders with two studies, a text file, a DICOM file cut in its header and a DICOMDIR."""
    report = scan(two_studies_with_junk.root)

    studies = {study.study_instance_uid: study for study in peers.listed(report.studies)}
    assert set(studies) == two_studies_with_junk.study_uids()
    found = peers.series_by_uid(report)
    assert set(found) == {s.series_uid for s in two_studies_with_junk.series}
    for written in two_studies_with_junk.series:
        series = found[written.series_uid]
        assert written.series_uid in {s.series_instance_uid for s in peers.listed(studies[written.study_uid].series)}
        assert peers.resolved(series.files) == peers.resolved(written.files)
        assert tuple(series.shape) == written.array.shape
        assert list(series.problems) == []

    skipped = peers.skipped_reasons(report)
    assert set(skipped) == peers.resolved(two_studies_with_junk.junk)
    assert all(reason.strip() for reason in skipped.values())


def test_gap_is_reported_as_a_problem_not_raised(tmp_path: Path) -> None:
    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.axial(), skip_slices=(2,))
    (series,) = peers.all_series(scan(tmp_path))
    problems = peers.without_folder(series.problems, tmp_path)
    assert any("missing" in problem.lower() for problem in problems), problems


def test_mixed_orientation_is_reported_as_a_problem(tmp_path: Path) -> None:
    def turn_slice_two(ds: Dataset, k: int) -> None:
        if k == 2:
            ds.ImageOrientationPatient = ["0.984808", "0.173648", "0", "-0.173648", "0.984808", "0"]

    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.axial(), mutate=turn_slice_two)
    (series,) = peers.all_series(scan(tmp_path))
    problems = peers.without_folder(series.problems, tmp_path)
    assert any("orientation" in problem.lower() for problem in problems), problems


def test_mixed_size_is_reported_as_a_problem(tmp_path: Path) -> None:
    def shrink_slice_two(ds: Dataset, k: int) -> None:
        if k == 2:
            factory.set_pixels(ds, np.zeros((ds.Rows - 1, ds.Columns), dtype=np.int16))

    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.axial(), mutate=shrink_slice_two)
    (series,) = peers.all_series(scan(tmp_path))
    assert series.problems, "a slice of another size must be reported"


def test_non_image_dicom_does_not_become_a_series(tmp_path: Path, testdata_file: Callable[[str], Path]) -> None:
    written = factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.axial())
    plan = factory.copy_into(testdata_file("rtplan.dcm"), tmp_path)
    report = scan(tmp_path)
    assert [s.series_instance_uid for s in peers.all_series(report)] == [written.series_uid]
    assert plan.resolve() in peers.skipped_reasons(report)


def test_pydicom_dicomdir_tree_is_scanned_like_a_census(dicomdir_tree: Path) -> None:
    """Every series that holds pixel data is found with all its files; every DICOMDIR is skipped."""
    census: Counter[str] = Counter()
    directories: set[Path] = set()
    for folder, _, names in os.walk(dicomdir_tree):
        for name in names:
            path = Path(folder) / name
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=False)
            except pydicom.errors.InvalidDicomError:
                continue
            if ds.file_meta.get("MediaStorageSOPClassUID") == pydicom.uid.MediaStorageDirectoryStorage:
                directories.add(path.resolve())
            elif "PixelData" in ds:
                census[ds.SeriesInstanceUID] += 1

    report = scan(dicomdir_tree)
    found = peers.series_by_uid(report)
    assert census.keys() <= found.keys()
    for series_uid, count in census.items():
        assert len(found[series_uid].files) == count
    assert directories <= set(peers.skipped_reasons(report))
