"""Conversions to and from SimpleITK, nibabel and MONAI keep voxels bit-for-bit and geometry exactly,
and each library reads the converted object the way it reads its own files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import dicom_factory as factory
from tests.conftest import SMALL_SHAPE
from tests.io import peers
from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.io import read_volume, write_nifti
from vesalius.io.dicom import read_series
from vesalius.io.interop import from_nibabel, from_sitk, from_tensor, to_nibabel, to_sitk, to_tensor

DTYPES = [np.int16, np.uint8, np.float32, np.float64]


def make_volume(array: np.ndarray, affine: np.ndarray) -> Volume:
    return Volume(array=array, affine=affine, modality="CT")


@st.composite
def volumes(draw: st.DrawFn) -> Volume:
    angles = draw(st.tuples(*(st.floats(-180, 180, allow_nan=False) for _ in range(3))))
    spacing = draw(st.tuples(*(st.floats(0.2, 6.0, allow_nan=False) for _ in range(3))))
    origin = draw(st.tuples(*(st.floats(-500, 500, allow_nan=False) for _ in range(3))))
    shape = draw(st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)))
    dtype = draw(st.sampled_from(DTYPES))
    array = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 250, shape).astype(dtype)
    return make_volume(array, factory.oblique(angles, spacing, origin))


def assert_same_volume(actual: Volume, expected: Volume, geometry_atol: float = 1e-9) -> None:
    assert actual.array.dtype == expected.array.dtype
    np.testing.assert_array_equal(actual.array, expected.array)
    peers.assert_same_geometry(actual.affine, expected.affine, atol=geometry_atol)


# --------------------------------------------------------------------------------------------------
# SimpleITK
# --------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(volume=volumes())
def test_simpleitk_round_trip_is_lossless(volume: Volume) -> None:
    image = to_sitk(volume)
    array, affine = peers.sitk_to_ijk(image)
    np.testing.assert_array_equal(array, volume.array)
    peers.assert_same_geometry(affine, volume.affine, atol=1e-9)
    assert_same_volume(from_sitk(image), volume)


def test_from_sitk_of_simpleitks_series_reader_equals_read_series(ct_series: factory.WrittenSeries) -> None:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct_series.folder)))
    converted = from_sitk(reader.Execute())
    ours = read_series(ct_series.folder)
    peers.assert_same_voxels(converted.array, ours.array)
    peers.assert_same_geometry(converted.affine, ours.affine)


def test_simpleitk_agrees_on_world_positions(ct_series: factory.WrittenSeries) -> None:
    """SimpleITK's own index-to-physical mapping gives the Volume's LPS positions."""
    volume = read_series(ct_series.folder)
    image = to_sitk(volume)
    for index in [(0, 0, 0), (7, 0, 0), (0, 9, 0), (3, 4, 5)]:
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), volume.index_to_world(index), atol=1e-6)


# --------------------------------------------------------------------------------------------------
# nibabel
# --------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(volume=volumes())
def test_nibabel_round_trip_is_lossless(volume: Volume) -> None:
    image = to_nibabel(volume)
    # NIfTI keeps sform/qform in float32, so geometry survives to float32 precision (< 1e-4 mm here)
    np.testing.assert_allclose(image.affine, peers.LPS_TO_RAS @ volume.affine, atol=peers.GEOMETRY_ATOL_MM)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), volume.array)
    assert_same_volume(from_nibabel(image), volume, geometry_atol=peers.GEOMETRY_ATOL_MM)


def test_nibabel_image_saves_as_the_nifti_write_nifti_writes(tmp_path: Path) -> None:
    volume = make_volume(np.arange(480, dtype=np.int16).reshape(SMALL_SHAPE), factory.oblique())
    nib.save(to_nibabel(volume), tmp_path / "via_nibabel.nii.gz")
    again = read_volume(tmp_path / "via_nibabel.nii.gz")
    peers.assert_same_voxels(again.array, volume.array)
    peers.assert_same_geometry(again.affine, volume.affine)


# --------------------------------------------------------------------------------------------------
# MONAI
# --------------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(volume=volumes())
def test_tensor_round_trip_is_lossless(volume: Volume) -> None:
    from monai.data.meta_tensor import MetaTensor

    tensor = to_tensor(volume)
    assert isinstance(tensor, MetaTensor)
    assert tuple(tensor.shape) == (1, *volume.shape)
    np.testing.assert_allclose(np.asarray(tensor.affine), peers.LPS_TO_RAS @ volume.affine, atol=1e-9)
    assert_same_volume(from_tensor(tensor), volume)


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")  # LoadImage probes an absent GPU codec
def test_tensor_matches_what_monai_loads_from_the_same_nifti(tmp_path: Path) -> None:
    """MONAI's LoadImage(ensure_channel_first) of our NIfTI and to_tensor of the Volume agree."""
    from monai.transforms.io.array import LoadImage

    volume = make_volume(factory.random_values(SMALL_SHAPE, intercept=-1024.0).astype(np.float32), factory.oblique())
    write_nifti(volume, tmp_path / "image.nii.gz")
    loaded = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(
        str(tmp_path / "image.nii.gz")
    )
    ours = to_tensor(volume)
    assert tuple(ours.shape) == tuple(loaded.shape)
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(loaded.affine), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(loaded))


def test_monai_orientation_transform_sees_the_right_axes() -> None:
    """MONAI's Orientation('RAS') on a sagittal (PIR) volume permutes/flips it into the same world."""
    from monai.transforms.spatial.array import Orientation

    volume = make_volume(np.arange(480, dtype=np.float32).reshape(SMALL_SHAPE), factory.sagittal())
    ras_labels = (("L", "R"), ("P", "A"), ("I", "S"))
    reoriented = from_tensor(Orientation(axcodes="RAS", labels=ras_labels)(to_tensor(volume)))
    assert reoriented.orientation == "RAS"  # axes now point to the Right, Anterior, Superior
    assert reoriented.shape == (6, 8, 10)  # i <- slices (R), j <- rows (A), k <- columns (S)
    for index in [(0, 0, 0), (5, 7, 9), (2, 3, 4)]:
        world = reoriented.index_to_world(index)
        source = np.rint(volume.world_to_index(world)).astype(int)
        assert reoriented.array[index] == volume.array[tuple(source)]


def test_plain_tensor_needs_a_reference_volume() -> None:
    import torch

    volume = make_volume(np.zeros(SMALL_SHAPE, np.float32), factory.axial())
    prediction = torch.ones((1, *SMALL_SHAPE))
    with pytest.raises(InputError):
        from_tensor(prediction)
    result = from_tensor(prediction, reference=volume)
    assert result.same_grid(volume)
    np.testing.assert_array_equal(result.array, np.ones(SMALL_SHAPE, np.float32))
