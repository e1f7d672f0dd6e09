"""read_series: a folder of single-frame DICOM files becomes one Volume with exact voxels and geometry.

The ground truth is what the factory wrote; SimpleITK's ImageSeriesReader is the peer. Slices are
stacked along the normal ``row x column`` whatever the file names, write order or InstanceNumbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import UID, generate_uid

from tests import dicom_factory as factory
from tests.conftest import SMALL_SHAPE
from tests.io import peers
from vesalius.core.errors import SeriesSelectionError
from vesalius.io import read_volume
from vesalius.io.dicom import read_series

ORIENTATIONS: dict[str, Callable[[], np.ndarray]] = {
    "axial": factory.axial,
    "coronal": factory.coronal,
    "sagittal": factory.sagittal,
    "oblique": factory.oblique,
}
ORIENTATION_CODES = {"axial": "LPS", "coronal": "LIP", "sagittal": "PIR"}


@pytest.mark.parametrize("instance_numbers", ["random", "reversed", "ascending"])
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_series_reads_as_ground_truth(
    tmp_path: Path, orientation: str, instance_numbers: factory.InstanceOrder
) -> None:
    written = factory.write_series(
        tmp_path,
        factory.random_values(SMALL_SHAPE, seed=1),
        ORIENTATIONS[orientation](),
        instance_numbers=instance_numbers,
        file_names="index",
        seed=7,
    )
    volume = read_series(tmp_path)
    assert volume.shape == SMALL_SHAPE
    peers.assert_same_voxels(volume.array, written.array)
    peers.assert_same_geometry(volume.affine, written.affine)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_series_agrees_with_simpleitk(tmp_path: Path, orientation: str) -> None:
    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE, seed=2), ORIENTATIONS[orientation]())
    sitk_array, sitk_affine = peers.sitk_read_series(tmp_path)
    volume = read_series(tmp_path)
    peers.assert_same_voxels(volume.array, sitk_array)
    peers.assert_same_geometry(volume.affine, sitk_affine)


@pytest.mark.parametrize(("orientation", "code"), ORIENTATION_CODES.items())
def test_orientation_code_names_where_the_axes_point(tmp_path: Path, orientation: str, code: str) -> None:
    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), ORIENTATIONS[orientation]())
    assert read_series(tmp_path).orientation == code


def test_spacing_is_i_j_k_with_pixel_spacing_read_as_row_then_column(tmp_path: Path) -> None:
    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.axial(spacing=(0.6, 0.9, 3.0)))
    np.testing.assert_allclose(read_series(tmp_path).spacing, [0.6, 0.9, 3.0], atol=1e-6)


def test_ct_values_are_hounsfield_units(ct_series: factory.WrittenSeries) -> None:
    volume = read_series(ct_series.folder)
    assert volume.array.dtype.kind in "iuf"
    assert volume.array.min() < 0 <= ct_series.array.max()  # intercept -1024 was applied
    peers.assert_same_voxels(volume.array, ct_series.array)


def test_signed_stored_values_keep_their_sign(tmp_path: Path) -> None:
    values = factory.random_values(SMALL_SHAPE, intercept=0.0, stored_range=(-2048, 2047))
    factory.write_series(tmp_path, values, factory.axial(), intercept=0.0)
    peers.assert_same_voxels(read_series(tmp_path).array, values)


@pytest.mark.parametrize(("modality", "slope", "intercept"), [("CT", 0.5, -1024.0), ("MR", 2.5, 0.0)])
def test_fractional_rescale_gives_float_voxels(tmp_path: Path, modality: str, slope: float, intercept: float) -> None:
    values = factory.random_values(SMALL_SHAPE, slope=slope, intercept=intercept, stored_range=(0, 3000))
    factory.write_series(tmp_path, values, factory.axial(), modality=modality, slope=slope, intercept=intercept)
    volume = read_series(tmp_path)
    assert volume.array.dtype.kind == "f"
    peers.assert_same_voxels(volume.array, values)


def test_mr_without_rescale_keeps_stored_values(mr_series: factory.WrittenSeries) -> None:
    volume = read_series(mr_series.folder)
    assert volume.modality == "MR"
    peers.assert_same_voxels(volume.array, mr_series.array)
    peers.assert_same_geometry(volume.affine, mr_series.affine)


def test_slice_spacing_comes_from_positions_not_slice_thickness(tmp_path: Path) -> None:
    """Overlapping reconstruction: 5 mm thick slices every 2.5 mm."""
    written = factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.axial(), slice_thickness=5.0)
    volume = read_series(tmp_path)
    assert volume.spacing[2] == pytest.approx(2.5, abs=1e-6)
    peers.assert_same_geometry(volume.affine, written.affine)


def test_stack_written_against_the_normal_is_stacked_along_it(tmp_path: Path) -> None:
    """Positions descend along row x column: k still runs along the normal, so the voxels are reversed."""
    against = factory.axial()
    against[:3, 2] *= -1
    written = factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), against)
    expected_array, expected_affine = peers.flip_k(written.array, written.affine)
    volume = read_series(tmp_path)
    peers.assert_same_voxels(volume.array, expected_array)
    peers.assert_same_geometry(volume.affine, expected_affine)
    sitk_array, sitk_affine = peers.sitk_read_series(tmp_path)
    peers.assert_same_voxels(volume.array, sitk_array)
    peers.assert_same_geometry(volume.affine, sitk_affine)


def test_file_names_and_extensions_do_not_matter(tmp_path: Path) -> None:
    written = factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.oblique(), file_names="bare")
    assert all(p.suffix == "" for p in written.files)
    peers.assert_same_voxels(read_series(tmp_path).array, written.array)


def test_volume_carries_modality_and_dicom_identity(ct_series: factory.WrittenSeries) -> None:
    volume = read_series(ct_series.folder)
    assert volume.modality == "CT"
    identity = volume.identity
    assert identity.study_instance_uid == ct_series.study_uid
    assert identity.series_instance_uid == ct_series.series_uid
    assert identity.frame_of_reference_uid == ct_series.identity.frame_of_reference_uid
    assert identity.sop_class_uid == factory.CTImageStorage
    assert list(identity.sop_instance_uids) == ct_series.sop_instance_uids  # in k order


@pytest.mark.parametrize("syntax", factory.UNCOMPRESSED_SYNTAXES, ids=lambda u: u.name)
def test_every_uncompressed_transfer_syntax_reads_the_same(tmp_path: Path, syntax: UID) -> None:
    values = factory.random_values(SMALL_SHAPE, intercept=0.0, stored_range=(-1024, 3071))
    written = factory.write_series(tmp_path, values, factory.oblique(), intercept=0.0, transfer_syntax=syntax)
    volume = read_series(tmp_path)
    peers.assert_same_voxels(volume.array, values)
    peers.assert_same_geometry(volume.affine, written.affine)


def test_single_slice_file_is_a_one_slice_volume(tmp_path: Path) -> None:
    written = factory.write_series(tmp_path, factory.random_values((8, 10, 1)), factory.oblique())
    volume = read_volume(written.files[0])
    assert volume.shape == (8, 10, 1)
    peers.assert_same_voxels(volume.array, written.array)
    peers.assert_same_geometry(volume.affine[:, [0, 1, 3]], written.affine[:, [0, 1, 3]])


# --------------------------------------------------------------------------------------------------
# Choosing a series
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def two_series_folder(tmp_path: Path) -> tuple[factory.WrittenSeries, factory.WrittenSeries]:
    study = generate_uid()
    ct = factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE, seed=1), factory.axial(), study_uid=study)
    mr = factory.write_series(
        tmp_path,
        factory.random_values((5, 6, 4), seed=2, intercept=0.0, stored_range=(0, 999)),
        factory.coronal(),
        modality="MR",
        study_uid=study,
    )
    return ct, mr


def test_several_series_without_a_choice_is_refused_naming_them(
    two_series_folder: tuple[factory.WrittenSeries, factory.WrittenSeries],
) -> None:
    ct, mr = two_series_folder
    with pytest.raises(SeriesSelectionError) as raised:
        read_series(ct.folder)
    assert ct.series_uid in str(raised.value)
    assert mr.series_uid in str(raised.value)


def test_named_series_is_read_from_a_shared_folder(
    two_series_folder: tuple[factory.WrittenSeries, factory.WrittenSeries],
) -> None:
    for written in two_series_folder:
        volume = read_series(written.folder, series_uid=written.series_uid)
        assert volume.identity.series_instance_uid == written.series_uid
        peers.assert_same_voxels(volume.array, written.array)
        peers.assert_same_geometry(volume.affine, written.affine)


def test_unknown_series_uid_is_refused(ct_series: factory.WrittenSeries) -> None:
    with pytest.raises(SeriesSelectionError, match=r"1\.2\.3\.999"):
        read_series(ct_series.folder, series_uid="1.2.3.999")


# --------------------------------------------------------------------------------------------------
# Property: any rigid geometry round-trips
# --------------------------------------------------------------------------------------------------

angles = st.tuples(*(st.floats(-180.0, 180.0, allow_nan=False) for _ in range(3)))
spacings = st.tuples(*(st.floats(0.3, 5.0, allow_nan=False) for _ in range(3)))
origins = st.tuples(*(st.floats(-300.0, 300.0, allow_nan=False) for _ in range(3)))
shapes = st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 6))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(angles=angles, spacing=spacings, origin=origins, shape=shapes, seed=st.integers(0, 2**16))
def test_any_rigid_geometry_round_trips(
    angles: tuple[float, float, float],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    shape: tuple[int, int, int],
    seed: int,
) -> None:
    folder = factory.scratch_folder()
    try:
        affine = factory.oblique(angles, spacing, origin)
        written = factory.write_series(folder, factory.random_values(shape, seed=seed), affine, seed=seed)
        volume = read_series(folder)
        peers.assert_same_voxels(volume.array, written.array)
        peers.assert_same_geometry(volume.affine, written.affine)
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
