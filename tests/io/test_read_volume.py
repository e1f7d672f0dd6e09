"""read_volume: one entry point for DICOM (file or folder), NIfTI, NRRD and MetaImage, all in LPS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import dicom_factory as factory
from tests.conftest import SMALL_SHAPE
from tests.io import peers
from vesalius.core.errors import InputError
from vesalius.io import read_volume

AFFINE = factory.oblique((5.0, -12.0, 30.0), spacing=(0.6, 0.9, 1.7), origin=(-40.0, 12.5, 88.0))


@pytest.fixture
def voxels() -> np.ndarray:
    return np.random.default_rng(4).integers(-1000, 2000, SMALL_SHAPE).astype(np.int16)


def write_with_simpleitk(path: Path, array_ijk: np.ndarray, affine: np.ndarray) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array_ijk.transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, :3] / spacing).flatten().tolist())
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("suffix", [".mha", ".mhd", ".nrrd"])
def test_simpleitk_written_images_read_in_lps(tmp_path: Path, voxels: np.ndarray, suffix: str) -> None:
    path = write_with_simpleitk(tmp_path / f"image{suffix}", voxels, AFFINE)
    volume = read_volume(path)
    assert volume.array.dtype == np.int16
    peers.assert_same_voxels(volume.array, voxels)
    peers.assert_same_geometry(volume.affine, AFFINE)


@pytest.mark.parametrize(
    ("space", "to_lps"),
    [("left-posterior-superior", np.eye(4)), ("right-anterior-superior", peers.LPS_TO_RAS)],
    ids=["LPS", "RAS"],
)
def test_nrrd_from_pynrrd_in_either_space(tmp_path: Path, voxels: np.ndarray, space: str, to_lps: np.ndarray) -> None:
    """A NRRD written in RAS space (as 3D Slicer can) still reads with its true LPS geometry."""
    import nrrd

    in_space = to_lps @ AFFINE  # LPS_TO_RAS is its own inverse
    header = {
        "space": space,
        "space directions": in_space[:3, :3].T,  # one row per axis
        "space origin": in_space[:3, 3],
        "kinds": ["domain", "domain", "domain"],
    }
    nrrd.write(str(tmp_path / "image.nrrd"), voxels, header, index_order="F")
    volume = read_volume(tmp_path / "image.nrrd")
    peers.assert_same_voxels(volume.array, voxels)
    peers.assert_same_geometry(volume.affine, AFFINE)


def test_dicom_folder_and_file_go_to_the_dicom_reader(ct_series: factory.WrittenSeries) -> None:
    volume = read_volume(ct_series.folder)
    peers.assert_same_voxels(volume.array, ct_series.array)
    peers.assert_same_geometry(volume.affine, ct_series.affine)
    one = read_volume(ct_series.files[0])
    peers.assert_same_voxels(one.array[:, :, 0], ct_series.array[:, :, 0])


def test_series_uid_picks_a_series_in_a_mixed_folder(tmp_path: Path) -> None:
    first = factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE, seed=1), factory.axial())
    factory.write_series(tmp_path, factory.random_values(SMALL_SHAPE, seed=2), factory.sagittal())
    volume = read_volume(tmp_path, series_uid=first.series_uid)
    peers.assert_same_voxels(volume.array, first.array)


def test_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    junk = factory.write_text_file(tmp_path / "image.nrrd", "NRRD0004\nthis is not a header\n")
    with pytest.raises(InputError, match=r"image\.nrrd"):
        read_volume(junk)


def test_missing_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing-here"):
        read_volume(tmp_path / "nothing-here.nii.gz")
