"""Real clinical series from ../shared/data, compared with SimpleITK; skipped when the folder is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.io import peers
from vesalius.io.dicom import read_series, scan

pytestmark = pytest.mark.shared_data


def existing(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


def test_lidc_chest_ct_matches_simpleitk(shared_data: Path) -> None:
    """LIDC-IDRI-0001: 133 axial slices of 512 x 512 at 2.5 mm, next to the readers' XML annotations."""
    folder = existing(shared_data / "lidc" / "LIDC-IDRI-0001")
    volume = read_series(folder)
    assert volume.shape == (512, 512, 133)
    assert volume.modality == "CT"
    assert volume.orientation == "LPS"
    assert volume.spacing[2] == pytest.approx(2.5, abs=1e-3)
    assert volume.array.min() >= -3024  # -2048 pads the round field of view
    assert volume.array.max() <= 4000
    assert -1100 <= np.median(volume.array) <= 200  # mostly air and soft tissue
    sitk_array, sitk_affine = peers.sitk_read_series(folder)
    peers.assert_same_voxels(volume.array, sitk_array)
    peers.assert_same_geometry(volume.affine, sitk_affine)


def test_lidc_scan_skips_the_annotation_xml(shared_data: Path) -> None:
    folder = existing(shared_data / "lidc" / "LIDC-IDRI-0001")
    report = scan(folder)
    (series,) = peers.all_series(report)
    assert len(series.files) == 133
    assert {p.suffix for p in peers.skipped_reasons(report)} == {".xml"}


def test_brain_mr_study_has_five_series_in_one_study(shared_data: Path) -> None:
    folder = existing(shared_data / "dicom" / "brain-mr-study1")
    report = scan(folder)
    studies = peers.listed(report.studies)
    assert len(studies) == 1
    series = peers.all_series(report)
    assert len(series) == 5
    assert {s.modality for s in series} == {"MR"}
    assert sorted(len(s.files) for s in series) == [22, 22, 22, 22, 32]
    assert all(not s.problems for s in series), {s.series_instance_uid: s.problems for s in series}


def test_brain_mr_oblique_series_matches_simpleitk(shared_data: Path) -> None:
    """The T1 post-contrast series is oblique (tilted about x by about 15 degrees)."""
    folder = existing(shared_data / "dicom" / "brain-mr-study1" / "12-T1post-05670")
    volume = read_series(folder)
    assert volume.shape == (512, 512, 22)
    assert not np.allclose(np.abs(volume.direction), np.eye(3), atol=1e-3)
    sitk_array, sitk_affine = peers.sitk_read_series(folder)
    peers.assert_same_voxels(volume.array, sitk_array)
    peers.assert_same_geometry(volume.affine, sitk_affine)


def test_jpeg2000_ct_series_matches_simpleitk(shared_data: Path) -> None:
    folder = existing(shared_data / "dicom" / "ct-jpeg2000-series")
    volume = read_series(folder)
    assert volume.shape == (512, 512, 20)
    assert volume.modality == "CT"
    sitk_array, sitk_affine = peers.sitk_read_series(folder)
    peers.assert_same_voxels(volume.array, sitk_array)
    peers.assert_same_geometry(volume.affine, sitk_affine)
