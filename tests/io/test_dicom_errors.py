"""Bad input is refused with an error that names the problem, the file or the position.

A series that is not one regular grid raises SeriesGeometryError; files that are not DICOM, cut short or
undecodable raise NotDicomError / PixelDecodeError; a folder without images raises NoDicomFoundError.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests import dicom_factory as factory
from tests.conftest import SMALL_SHAPE
from tests.io import peers
from vesalius.core.errors import InputError, NoDicomFoundError, NotDicomError, PixelDecodeError, SeriesGeometryError
from vesalius.io import read_volume
from vesalius.io.dicom import read_series

# --------------------------------------------------------------------------------------------------
# Series that are not one grid
# --------------------------------------------------------------------------------------------------


def problems_of(error: SeriesGeometryError) -> str:
    """The error's problem statements, lower-cased, without its list of files (whose temporary folder
    names repeat the test's name)."""
    return "; ".join(error.problems).lower()


def test_missing_slice_is_refused_naming_its_neighbours(tmp_path: Path) -> None:
    """Slice 3 of 6 is absent: the message says 'missing' and names slices 2 and 4 by file or position."""
    affine = factory.axial()
    written = factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), affine, skip_slices=(3,))
    before, after = written.files[2], written.files[3]  # slices k = 2 and k = 4
    z_before, z_after = (affine @ [0.0, 0.0, 2.0, 1.0])[2], (affine @ [0.0, 0.0, 4.0, 1.0])[2]

    with pytest.raises(SeriesGeometryError) as raised:
        read_series(tmp_path)
    message = problems_of(raised.value)
    assert "missing" in message
    names_files = before.name in message and after.name in message
    names_positions = peers.mentions_position(message, z_before) and peers.mentions_position(message, z_after)
    assert names_files or names_positions, message


def test_missing_slices_in_an_oblique_series_are_refused(tmp_path: Path) -> None:
    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.oblique(), skip_slices=(1, 2))
    with pytest.raises(SeriesGeometryError) as raised:
        read_series(tmp_path)
    assert "missing" in problems_of(raised.value)


def _rotate_orientation_of_slice(k_to_change: int, degrees: float) -> factory.Mutator:
    def mutate(ds: Dataset, k: int) -> None:
        if k == k_to_change:
            turned = factory.rotation((0.0, 0.0, degrees))
            row, col = turned @ [1.0, 0.0, 0.0], turned @ [0.0, 1.0, 0.0]
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]

    return mutate


def _shrink_slice(k_to_change: int) -> factory.Mutator:
    def mutate(ds: Dataset, k: int) -> None:
        if k == k_to_change:
            factory.set_pixels(ds, np.zeros((ds.Rows, ds.Columns - 1), dtype=np.int16))

    return mutate


def test_mixed_orientation_is_refused(tmp_path: Path) -> None:
    factory.write_series(
        tmp_path, factory.random_values(SMALL_SHAPE), factory.axial(), mutate=_rotate_orientation_of_slice(2, 10.0)
    )
    with pytest.raises(SeriesGeometryError) as raised:
        read_series(tmp_path)
    assert "orientation" in problems_of(raised.value)


def test_mixed_image_size_is_refused(tmp_path: Path) -> None:
    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.axial(), mutate=_shrink_slice(2))
    with pytest.raises(SeriesGeometryError) as raised:
        read_series(tmp_path)
    assert re.search(r"size|rows|columns|\b7\s*x\s*10\b", problems_of(raised.value))


def test_repeated_slice_position_is_refused(tmp_path: Path) -> None:
    """Two different images claim the same place in space: the reader cannot choose silently."""

    def duplicate_position(ds: Dataset, k: int) -> None:
        if k == 4:
            ds.ImagePositionPatient = [str(v) for v in (factory.axial() @ [0.0, 0.0, 3.0, 1.0])[:3]]

    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.axial(), mutate=duplicate_position)
    with pytest.raises(SeriesGeometryError):
        read_series(tmp_path)


# --------------------------------------------------------------------------------------------------
# Files and folders that hold no usable image
# --------------------------------------------------------------------------------------------------


def test_empty_folder_has_no_dicom(tmp_path: Path) -> None:
    with pytest.raises(NoDicomFoundError):
        read_series(tmp_path)
    with pytest.raises(NoDicomFoundError):
        read_volume(tmp_path)


def test_folder_of_junk_has_no_dicom(tmp_path: Path, testdata_file: Callable[[str], Path]) -> None:
    factory.write_text_file(tmp_path / "readme.txt")
    factory.copy_into(testdata_file("rtplan.dcm"), tmp_path)
    with pytest.raises(NoDicomFoundError):
        read_series(tmp_path)


def test_text_file_is_not_dicom(tmp_path: Path) -> None:
    """A file named explicitly is judged as a file: NotDicomError (NoDicomFoundError is for folders)."""
    text = factory.write_text_file(tmp_path / "notes.dcm")
    with pytest.raises(NotDicomError) as raised:
        read_series(text)
    assert "notes.dcm" in str(raised.value)


def test_file_cut_inside_its_header_is_not_dicom(tmp_path: Path, ct_series: factory.WrittenSeries) -> None:
    cut = factory.truncate_copy(ct_series.files[0], tmp_path / "cut.dcm", keep_bytes=400)
    with pytest.raises(NotDicomError) as raised:
        read_series(cut)
    assert "cut.dcm" in str(raised.value)


def test_file_cut_inside_its_pixel_data_is_refused_naming_it(ct_series: factory.WrittenSeries) -> None:
    damaged = factory.truncate_pixel_data(ct_series.files[3], drop_bytes=64)
    with pytest.raises((NotDicomError, PixelDecodeError)) as raised:
        read_series(ct_series.folder)
    assert damaged.name in str(raised.value)


def test_undecodable_compressed_pixels_raise_pixel_decode_error(ct_series: factory.WrittenSeries) -> None:
    damaged = factory.corrupt_compressed_pixels(ct_series.files[2])
    assert pydicom.dcmread(damaged).file_meta.TransferSyntaxUID == factory.JPEG2000Lossless
    with pytest.raises(PixelDecodeError) as raised:
        read_series(ct_series.folder)
    message = str(raised.value)
    assert damaged.name in message
    assert factory.JPEG2000Lossless in message or factory.JPEG2000Lossless.name in message


def test_truncated_file_from_pydicom_data_is_refused(tmp_path: Path, testdata_file: Callable[[str], Path]) -> None:
    copy = factory.copy_into(testdata_file("MR_truncated.dcm"), tmp_path)
    with pytest.raises(InputError) as raised:
        read_series(copy)
    assert "MR_truncated.dcm" in str(raised.value)
