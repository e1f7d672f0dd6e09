"""The generator itself: its files are valid DICOM whose content and geometry are exactly the ground truth.

These tests need no Vesalius code: they check the factory against pydicom, SimpleITK and dcm2niix, so a
reader test that fails points at the reader, not at the data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from tests import dicom_factory as factory
from tests.conftest import SMALL_SHAPE, MixedFolder
from tests.io import peers

ORIENTATIONS: dict[str, Callable[[], np.ndarray]] = {
    "axial": factory.axial,
    "coronal": factory.coronal,
    "sagittal": factory.sagittal,
    "oblique": factory.oblique,
}


def test_each_slice_file_carries_identity_geometry_and_values(ct_series: factory.WrittenSeries) -> None:
    affine = ct_series.affine
    for k, path in enumerate(ct_series.files):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == ct_series.sop_instance_uids[k]
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID):
            assert UID(uid).is_valid
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (ct_series.study_uid, ct_series.series_uid)
        assert ds.Modality == "CT"
        assert ds.PatientID
        assert (ds.Columns, ds.Rows) == SMALL_SHAPE[:2]
        assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 1)
        np.testing.assert_allclose([float(x) for x in ds.PixelSpacing], [0.8, 0.7])  # [row (j), column (i)]
        np.testing.assert_allclose([float(x) for x in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        expected_position = (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
        np.testing.assert_allclose([float(x) for x in ds.ImagePositionPatient], expected_position)
        assert float(ds.SliceThickness) == pytest.approx(2.5)
        np.testing.assert_array_equal(peers.hu_of(ds)[:, :, 0], ct_series.array[:, :, k])


def test_instance_numbers_follow_the_requested_order(tmp_path: Path) -> None:
    values = factory.random_values(SMALL_SHAPE)
    expected = {"ascending": [1, 2, 3, 4, 5, 6], "reversed": [6, 5, 4, 3, 2, 1]}
    for order in ("ascending", "reversed", "random"):
        written = factory.write_series(tmp_path / order, values, factory.axial(), instance_numbers=order)
        numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in written.files]
        assert sorted(numbers) == [1, 2, 3, 4, 5, 6]
        if order in expected:
            assert numbers == expected[order]
        else:
            assert numbers not in (expected["ascending"], expected["reversed"])


def test_index_file_names_do_not_reveal_slice_order(tmp_path: Path) -> None:
    written = factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.axial(), file_names="index")
    assert [p.name for p in written.files] != sorted(p.name for p in written.files)


def test_skipped_slices_leave_a_gap_in_positions(tmp_path: Path) -> None:
    written = factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE), factory.axial(), skip_slices=(3,))
    z = sorted(float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in written.files)
    assert len(written.files) == 5
    assert np.diff(z).tolist() == pytest.approx([2.5, 2.5, 5.0, 2.5])


def test_values_that_stored_integers_cannot_hold_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="representable"):
        factory.write_series(tmp_path, np.full(SMALL_SHAPE, 0.25), factory.axial())


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("instance_numbers", ["random", "reversed"])
def test_simpleitk_reads_the_ground_truth(
    tmp_path: Path, orientation: str, instance_numbers: factory.InstanceOrder
) -> None:
    written = factory.write_series(
        tmp_path,
        factory.random_values(SMALL_SHAPE, seed=3),
        ORIENTATIONS[orientation](),
        instance_numbers=instance_numbers,
        file_names="index",
    )
    array, affine = peers.sitk_read_series(tmp_path)
    peers.assert_same_voxels(array, written.array)
    peers.assert_same_geometry(affine, written.affine)


@pytest.mark.parametrize(
    "syntax", factory.UNCOMPRESSED_SYNTAXES + factory.LOSSLESS_COMPRESSED_SYNTAXES, ids=lambda u: u.name
)
def test_every_transfer_syntax_round_trips_through_pydicom(tmp_path: Path, syntax: UID) -> None:
    if not factory.can_encode(syntax):
        pytest.skip(f"no encoder for {syntax.name}")
    values = factory.random_values(SMALL_SHAPE, intercept=0.0, stored_range=(-1024, 3071))
    written = factory.write_series(tmp_path, values, factory.axial(), intercept=0.0, transfer_syntax=syntax)
    for k, path in enumerate(written.files):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.SOPInstanceUID == written.sop_instance_uids[k]
        np.testing.assert_array_equal(peers.hu_of(ds)[:, :, 0], values[:, :, k])


@pytest.mark.parametrize(
    "syntax", [factory.ExplicitVRLittleEndian, *factory.LOSSLESS_COMPRESSED_SYNTAXES], ids=lambda u: u.name
)
@pytest.mark.parametrize("geometry_in", ["shared", "per_frame"])
def test_multiframe_holds_functional_groups_and_frames(
    tmp_path: Path, geometry_in: factory.GeometryPlacement, syntax: UID
) -> None:
    """Each frame's pixels are the slice its PlanePositionSequence names, in every transfer syntax
    (GDCM, used for some encoders, would rewrite the positions if the factory let it)."""
    if not factory.can_encode(syntax):
        pytest.skip(f"no encoder for {syntax.name}")
    values = factory.random_values(SMALL_SHAPE, seed=5)
    written = factory.write_multiframe(
        tmp_path,
        values,
        factory.oblique(),
        frame_order="random",
        geometry_in=geometry_in,
        transfer_syntax=syntax,
    )
    ds = pydicom.dcmread(written.files[0])
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.SOPClassUID == pydicom.uid.EnhancedCTImageStorage
    assert int(ds.NumberOfFrames) == SMALL_SHAPE[2]
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert float(shared.PixelValueTransformationSequence[0].RescaleIntercept) == -1024.0
    frames = peers.hu_of(ds)
    inverse = np.linalg.inv(written.affine)
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        geometry = shared if geometry_in == "shared" else item
        iop = [float(x) for x in geometry.PlaneOrientationSequence[0].ImageOrientationPatient]
        np.testing.assert_allclose(iop, np.concatenate([written.affine[:3, 0] / 0.7, written.affine[:3, 1] / 0.8]))
        position = [float(x) for x in item.PlanePositionSequence[0].ImagePositionPatient]
        k = (inverse @ np.array([*position, 1.0]))[:3]
        np.testing.assert_allclose(k[:2], 0.0, atol=1e-9)
        assert k[2] == pytest.approx(round(k[2]))
        np.testing.assert_array_equal(frames[:, :, f], values[:, :, round(k[2])])


def test_tilted_phantom_matches_dcm2niix_tilt_correction(tmp_path: Path, dcm2niix: str) -> None:
    """dcm2niix resamples gantry-tilted CT; the sphere it produces sits where the factory says it is."""
    import nibabel as nib

    phantom = factory.gantry_tilted_series(tmp_path / "dicom", tilt_deg=15.0, iop_tilted=True)
    outputs = peers.run_dcm2niix(dcm2niix, phantom.series.folder, tmp_path / "nifti")
    corrected = [p for p in outputs if "Tilt" in p.name]
    assert corrected, f"dcm2niix wrote no tilt-corrected image: {outputs}"
    image = nib.Nifti1Image.from_filename(corrected[0])
    data = np.asarray(image.get_fdata())
    centroid = peers.weighted_centroid_index(data, 0.0, 1000.0)
    ras = image.affine @ np.array([*centroid, 1.0])
    lps = peers.LPS_TO_RAS @ ras
    spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    assert np.all(np.abs(lps[:3] - phantom.centre_lps) < 0.5 * spacing.min())


def test_dicomdir_tree_fixture_is_the_multi_study_tree(dicomdir_tree: Path) -> None:
    assert (dicomdir_tree / "DICOMDIR").is_file()
    ds = pydicom.dcmread(dicomdir_tree / "DICOMDIR")
    assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.MediaStorageDirectoryStorage


def test_the_header_cut_junk_file_holds_no_image(two_studies_with_junk: MixedFolder) -> None:
    cut = next(p for p in two_studies_with_junk.junk if p.name == "cut_in_header.dcm")
    ds = pydicom.dcmread(cut, force=True)
    assert "PixelData" not in ds
    assert "SeriesInstanceUID" not in ds
