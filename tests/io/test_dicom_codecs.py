"""Compressed transfer syntaxes decode to exactly the voxels of their uncompressed form.

Generated series are encoded with pydicom (RLE, JPEG 2000) or GDCM (JPEG-LS, JPEG lossless, small JPEG
2000); a syntax with no encoder installed is skipped. Real files come from pydicom-data, in pairs of the
same image stored uncompressed and compressed, and singly against pydicom's own decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from tests import dicom_factory as factory
from tests.conftest import SMALL_SHAPE
from tests.io import peers
from vesalius.core.errors import InputError
from vesalius.io import read_volume
from vesalius.io.dicom import read_series


@pytest.mark.parametrize("syntax", factory.LOSSLESS_COMPRESSED_SYNTAXES, ids=lambda u: u.name)
@pytest.mark.parametrize(
    ("shape", "make_affine"),
    [(SMALL_SHAPE, factory.oblique), ((40, 36, 3), factory.sagittal)],
    ids=["8x10x6", "40x36x3"],
)
def test_compressed_series_reads_like_uncompressed(
    tmp_path: Path, syntax: UID, shape: tuple[int, int, int], make_affine: Callable[[], np.ndarray]
) -> None:
    if not factory.can_encode(syntax):
        pytest.skip(f"no encoder installed for {syntax.name}")
    values = factory.random_values(shape, intercept=0.0, stored_range=(-1024, 3071))
    plain = factory.write_series(tmp_path / "plain", values, make_affine(), intercept=0.0)
    packed = factory.write_compressed(tmp_path / "packed", values, make_affine(), syntax, intercept=0.0)
    assert pydicom.dcmread(packed.files[0]).file_meta.TransferSyntaxUID == syntax

    from_plain, from_packed = read_series(plain.folder), read_series(packed.folder)
    peers.assert_same_voxels(from_packed.array, from_plain.array)
    peers.assert_same_voxels(from_packed.array, values)
    peers.assert_same_geometry(from_packed.affine, from_plain.affine)


# (uncompressed, compressed) pairs of the same image in pydicom / pydicom-data
PAIRS = [
    ("MR_small.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
    ("emri_small.dcm", "emri_small_RLE.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
    ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
    ("US1_UNCR.dcm", "US1_J2KR.dcm"),
    ("RG1_UNCR.dcm", "RG1_J2KR.dcm"),
]


@pytest.mark.parametrize(("plain_name", "packed_name"), PAIRS, ids=[p[1] for p in PAIRS])
def test_real_compressed_file_decodes_like_its_uncompressed_twin(
    testdata_file: Callable[[str], Path], plain_name: str, packed_name: str
) -> None:
    plain, packed = read_volume(testdata_file(plain_name)), read_volume(testdata_file(packed_name))
    peers.assert_same_voxels(packed.array, plain.array)
    peers.assert_same_geometry(packed.affine, plain.affine)


SINGLE_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG-LL.dcm",  # JPEG lossless, process 14 SV1
    "JPEG2000.dcm",  # lossy JPEG 2000, NM secondary capture
    "MR2_J2KR.dcm",
    "US1_J2KR.dcm",  # RGB: a trailing channel axis
    "emri_small_jpeg_2k_lossless.dcm",
]


@pytest.mark.parametrize("name", SINGLE_FILES)
def test_real_file_decodes_like_pydicom(testdata_file: Callable[[str], Path], name: str) -> None:
    path = testdata_file(name)
    volume = read_volume(path)
    expected = peers.hu_of(pydicom.dcmread(path))  # [i, j, frame(, sample)]
    peers.assert_same_voxels(volume.array, expected)


def test_rgb_image_has_a_trailing_channel_axis(testdata_file: Callable[[str], Path]) -> None:
    volume = read_volume(testdata_file("US1_UNCR.dcm"))
    assert volume.array.shape == (640, 480, 1, 3)
    assert volume.shape == (640, 480, 1)


def test_ct_small_is_in_plausible_hounsfield_units(testdata_file: Callable[[str], Path]) -> None:
    path = testdata_file("CT_small.dcm")
    volume = read_volume(path)
    ds = pydicom.dcmread(path)
    assert volume.shape == (128, 128, 1)
    assert volume.modality == "CT"
    assert -1100 <= volume.array.min() < -500  # air is about -1000 HU
    assert 0 < volume.array.max() <= 4000
    np.testing.assert_array_equal(
        np.asarray(volume.array[:, :, 0], dtype=np.float64),
        ds.pixel_array.T.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
    )
    row, col = np.asarray([float(v) for v in ds.ImageOrientationPatient]).reshape(2, 3) * 1.0
    np.testing.assert_allclose(volume.affine[:3, 0], row * float(ds.PixelSpacing[1]), atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, 1], col * float(ds.PixelSpacing[0]), atol=1e-6)
    np.testing.assert_allclose(volume.origin, [float(v) for v in ds.ImagePositionPatient], atol=1e-6)


def test_non_image_dicom_is_refused(testdata_file: Callable[[str], Path]) -> None:
    with pytest.raises(InputError, match="rtplan"):
        read_volume(testdata_file("rtplan.dcm"))
