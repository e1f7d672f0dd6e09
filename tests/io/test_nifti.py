"""NIfTI: write then read gives the same voxels and geometry; the file is RAS as every NIfTI tool expects;
a DICOM series converted by Vesalius matches dcm2niix's conversion of the same series."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from tests import dicom_factory as factory
from tests.conftest import SMALL_SHAPE
from tests.io import peers
from vesalius.core.volume import Volume
from vesalius.io import read_volume, write_nifti

ORIENTATIONS: dict[str, Callable[[], np.ndarray]] = {
    "axial": factory.axial,
    "coronal": factory.coronal,
    "sagittal": factory.sagittal,
    "oblique": factory.oblique,
}


def make_volume(array: np.ndarray, affine: np.ndarray, **fields: Any) -> Volume:
    return Volume(array=array, affine=affine, **fields)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(
    ("dtype", "make_affine"), [(np.int16, factory.axial), (np.float32, factory.oblique), (np.uint8, factory.sagittal)]
)
def test_nifti_write_then_read_is_lossless(
    tmp_path: Path, suffix: str, dtype: type, make_affine: Callable[[], np.ndarray]
) -> None:
    array: np.ndarray = np.random.default_rng(0).integers(0, 200, SMALL_SHAPE).astype(dtype)
    original = make_volume(array, make_affine())
    path = write_nifti(original, tmp_path / f"image{suffix}") or tmp_path / f"image{suffix}"
    again = read_volume(path)
    assert again.array.dtype == array.dtype
    peers.assert_same_voxels(again.array, array)
    peers.assert_same_geometry(again.affine, original.affine)


def test_written_nifti_is_ras_with_sform_and_qform(tmp_path: Path) -> None:
    volume = make_volume(np.zeros(SMALL_SHAPE, np.int16), factory.oblique())
    write_nifti(volume, tmp_path / "image.nii.gz")
    image = nib.Nifti1Image.from_filename(tmp_path / "image.nii.gz")
    np.testing.assert_allclose(image.affine, peers.LPS_TO_RAS @ volume.affine, atol=1e-4)
    assert int(image.header["sform_code"]) > 0
    assert int(image.header["qform_code"]) > 0
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-4)
    assert image.header.get_xyzt_units()[0] == "mm"


def test_nifti_written_by_nibabel_reads_in_lps(tmp_path: Path) -> None:
    ras = np.array([[-0.5, 0, 0, 90.0], [0, 0.75, 0, -120.0], [0, 0, 2.0, -40.0], [0, 0, 0, 1]])
    array = np.arange(np.prod(SMALL_SHAPE), dtype=np.float32).reshape(SMALL_SHAPE)
    nib.save(nib.Nifti1Image(array, ras), tmp_path / "from_nibabel.nii")
    volume = read_volume(tmp_path / "from_nibabel.nii")
    peers.assert_same_voxels(volume.array, array)
    peers.assert_same_geometry(volume.affine, peers.LPS_TO_RAS @ ras)
    assert volume.orientation == "LAS"  # RAS column -x points left, +y anterior


def test_nifti_scaling_is_applied(tmp_path: Path) -> None:
    stored = np.random.default_rng(1).integers(0, 1000, SMALL_SHAPE).astype(np.int16)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(0.5, -100.0)
    nib.save(image, tmp_path / "scaled.nii")
    volume = read_volume(tmp_path / "scaled.nii")
    peers.assert_same_voxels(volume.array, stored * 0.5 - 100.0)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_dicom_to_nifti_matches_dcm2niix(tmp_path: Path, dcm2niix: str, orientation: str) -> None:
    """Both NIfTIs brought to RAS+ axis order (dcm2niix flips rows): same affine within 1e-3 mm, same voxels."""
    written = factory.write_series(
        tmp_path / "dicom", factory.random_values(SMALL_SHAPE, seed=9), ORIENTATIONS[orientation]()
    )
    ours = write_nifti(read_volume(written.folder), tmp_path / "ours.nii") or tmp_path / "ours.nii"
    (theirs,) = peers.run_dcm2niix(dcm2niix, written.folder, tmp_path / "dcm2niix")

    our_image, their_image = nib.Nifti1Image.from_filename(ours), nib.Nifti1Image.from_filename(theirs)
    our_voxels, our_affine = peers.canonical(our_image.get_fdata(), our_image.affine)
    their_voxels, their_affine = peers.canonical(their_image.get_fdata(), their_image.affine)
    np.testing.assert_allclose(our_affine, their_affine, atol=1e-3)
    np.testing.assert_array_equal(our_voxels, their_voxels)
