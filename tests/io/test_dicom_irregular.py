"""Slice positions that do not form one regular grid are reported by `scan` and refused by `read_series`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests import dicom_factory as factory
from vesalius.core.errors import SeriesGeometryError
from vesalius.io.dicom import read_series, scan

SHAPE = (6, 5, 7)


def _move_slice(k_moved: int, offset_lps: tuple[float, float, float]) -> factory.Mutator:
    def mutate(dataset: Dataset, k: int) -> None:
        if k == k_moved:
            position = [float(v) for v in dataset.ImagePositionPatient]
            dataset.ImagePositionPatient = [f"{p + o:.6f}" for p, o in zip(position, offset_lps, strict=True)]

    return mutate


def _problem_kinds(folder: Path) -> list[str]:
    (series,) = scan(folder).series
    return [p.kind for p in series.geometry.problems]


def test_uneven_spacing_is_reported_and_refused(tmp_path: Path) -> None:
    """Axial slices 2.5 mm apart, one moved 0.6 mm up: steps of 3.1 and 1.9 mm, no gap."""
    factory.write_series(tmp_path, factory.random_values(SHAPE), factory.axial(), mutate=_move_slice(3, (0, 0, 0.6)))
    assert _problem_kinds(tmp_path) == ["uneven_spacing"]
    with pytest.raises(SeriesGeometryError, match=r"uneven slice spacing: steps from 1\.9 to 3\.1 mm"):
        read_series(tmp_path)


def test_a_slice_off_the_line_is_reported_and_refused(tmp_path: Path) -> None:
    """One slice shifted 2 mm sideways: positions are not on one line (neither a grid nor a gantry tilt)."""
    factory.write_series(tmp_path, factory.random_values(SHAPE), factory.axial(), mutate=_move_slice(3, (2.0, 0, 0)))
    assert _problem_kinds(tmp_path) == ["irregular_positions"]
    with pytest.raises(SeriesGeometryError, match="do not lie on one line"):
        read_series(tmp_path)


def test_a_slice_without_position_is_refused(tmp_path: Path) -> None:
    def drop_position(dataset: Dataset, k: int) -> None:
        if k == 2:
            del dataset.ImagePositionPatient

    factory.write_series(tmp_path, factory.random_values(SHAPE), factory.axial(), mutate=drop_position)
    assert "missing_position" in _problem_kinds(tmp_path)
    with pytest.raises(SeriesGeometryError, match="1 frames lack a position"):
        read_series(tmp_path)


def test_sub_tolerance_jitter_is_accepted(tmp_path: Path) -> None:
    """Scanners round positions; 0.005 mm of jitter is still one regular grid."""
    written = factory.write_series(
        tmp_path, factory.random_values(SHAPE), factory.axial(), mutate=_move_slice(3, (0.004, 0, 0.005))
    )
    assert _problem_kinds(tmp_path) == []
    assert read_series(tmp_path).spacing[2] == pytest.approx(written.affine[2, 2], abs=1e-3)
