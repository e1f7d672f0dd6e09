"""The fast header path reads exactly what pydicom reads, or steps aside for pydicom's full parser."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from tests import dicom_factory as factory
from vesalius.io.dicom.header import WANTED_KEYWORDS, parse_header

REAL_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG-LL.dcm",
    "SC_rgb.dcm",
    "US1_J2KR.dcm",
    "MR2_UNCR.dcm",
    "emri_small.dcm",
    "OBXXXX1A_2frame.dcm",
    "rtdose.dcm",
]


def _pydicom_view(path: Path) -> tuple[pydicom.Dataset, int]:
    with open(path, "rb") as file:
        dataset = pydicom.dcmread(file, stop_before_pixels=True)
        return dataset, file.tell()


def _assert_same_as_pydicom(path: Path) -> bool:
    parsed = parse_header(path.read_bytes()[: 1 << 16])
    if parsed is None:
        return False
    fast, offset = parsed
    reference, reference_offset = _pydicom_view(path)
    assert offset == reference_offset
    for keyword in WANTED_KEYWORDS:
        assert fast.get(keyword) == reference.get(keyword), keyword
    assert fast.file_meta.TransferSyntaxUID == reference.file_meta.TransferSyntaxUID
    return True


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_read_the_same_as_pydicom(name: str) -> None:
    path = Path(str(get_testdata_file(name)))
    _assert_same_as_pydicom(path)


def test_the_fast_path_is_taken_for_explicit_little_endian_and_compressed_series(tmp_path: Path) -> None:
    values = factory.random_values((8, 6, 3))
    plain = factory.write_series(tmp_path / "plain", values, factory.oblique())
    compressed = factory.write_compressed(tmp_path / "rle", values, factory.oblique(), RLELossless)
    for path in [*plain.files, *compressed.files]:
        assert _assert_same_as_pydicom(path), path
    if factory.can_encode(JPEG2000Lossless):
        larger = factory.random_values((40, 36, 2))  # openjpeg encodes images of at least 32 pixels a side
        j2k = factory.write_compressed(tmp_path / "j2k", larger, factory.axial(), JPEG2000Lossless)
        assert _assert_same_as_pydicom(j2k.files[0])


def test_other_encodings_and_enhanced_objects_go_to_pydicom(tmp_path: Path) -> None:
    values = factory.random_values((8, 6, 3))
    implicit = factory.write_series(
        tmp_path / "implicit", values, factory.axial(), transfer_syntax=ImplicitVRLittleEndian
    )
    assert parse_header(implicit.files[0].read_bytes()) is None
    enhanced = factory.write_multiframe(tmp_path / "enhanced", values, factory.axial())
    assert parse_header(enhanced.files[0].read_bytes()) is None
    big_endian = Path(str(get_testdata_file("MR_small_bigendian.dcm")))
    assert parse_header(big_endian.read_bytes()) is None


def test_a_header_cut_short_goes_to_pydicom(tmp_path: Path) -> None:
    series = factory.write_series(tmp_path, factory.random_values((8, 6, 2)), factory.axial())
    data = series.files[0].read_bytes()
    offset = parse_header(data)
    assert offset is not None
    assert parse_header(data[: offset[1] - 10]) is None
    assert parse_header(b"not dicom at all" * 20) is None
