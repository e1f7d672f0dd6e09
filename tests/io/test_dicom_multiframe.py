"""Enhanced (multi-frame) CT/MR: one object, geometry in functional groups, frames in any order.

It must read exactly like the same volume written as single-frame files.
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
from vesalius.io import read_volume
from vesalius.io.dicom import read_series


@pytest.mark.parametrize("geometry_in", ["shared", "per_frame"])
@pytest.mark.parametrize("frame_order", ["ascending", "reversed", "random"])
def test_multiframe_equals_the_same_data_as_single_frames(
    tmp_path: Path, frame_order: factory.InstanceOrder, geometry_in: factory.GeometryPlacement
) -> None:
    values = factory.random_values(SMALL_SHAPE, seed=31)
    affine = factory.oblique((10.0, 25.0, -30.0))
    single = factory.write_series(tmp_path / "single", values, affine)
    multi = factory.write_multiframe(
        tmp_path / "multi",
        values,
        affine,
        frame_order=frame_order,
        geometry_in=geometry_in,
    )
    from_single = read_series(single.folder)
    from_multi = read_series(multi.folder)
    peers.assert_same_voxels(from_multi.array, from_single.array)
    peers.assert_same_geometry(from_multi.affine, from_single.affine)
    peers.assert_same_voxels(from_multi.array, values)
    peers.assert_same_geometry(from_multi.affine, affine)


def test_multiframe_file_reads_directly_with_its_identity(multiframe_ct: factory.WrittenSeries) -> None:
    volume = read_volume(multiframe_ct.files[0])
    peers.assert_same_voxels(volume.array, multiframe_ct.array)
    peers.assert_same_geometry(volume.affine, multiframe_ct.affine)
    assert volume.modality == "CT"
    assert volume.identity.series_instance_uid == multiframe_ct.series_uid
    assert volume.identity.sop_class_uid == factory.EnhancedCTImageStorage
    assert list(volume.identity.sop_instance_uids) == multiframe_ct.sop_instance_uids


@pytest.mark.parametrize(
    ("make_affine", "slope", "intercept"),
    [(factory.sagittal, 1.0, 0.0), (factory.coronal, 2.5, 0.0)],
    ids=["sagittal-plain", "coronal-slope-2.5"],
)
def test_enhanced_mr_with_rescale_in_functional_groups(
    tmp_path: Path, make_affine: Callable[[], np.ndarray], slope: float, intercept: float
) -> None:
    values = factory.random_values(SMALL_SHAPE, slope=slope, intercept=intercept, stored_range=(0, 2000))
    written = factory.write_multiframe(
        tmp_path, values, make_affine(), modality="MR", slope=slope, intercept=intercept, frame_order="reversed"
    )
    assert pydicom.dcmread(written.files[0]).SOPClassUID == factory.EnhancedMRImageStorage
    volume = read_series(tmp_path)
    assert volume.modality == "MR"
    peers.assert_same_voxels(volume.array, values)
    peers.assert_same_geometry(volume.affine, written.affine)


@pytest.mark.parametrize("syntax", [factory.RLELossless, factory.JPEG2000Lossless], ids=lambda u: u.name)
def test_compressed_multiframe_reads_the_same(tmp_path: Path, syntax: UID) -> None:
    if not factory.can_encode(syntax):
        pytest.skip(f"no encoder for {syntax.name}")
    values = factory.random_values(SMALL_SHAPE, seed=32)
    written = factory.write_multiframe(tmp_path, values, factory.axial(), frame_order="random", transfer_syntax=syntax)
    volume = read_series(tmp_path)
    peers.assert_same_voxels(volume.array, values)
    peers.assert_same_geometry(volume.affine, written.affine)


def test_enhanced_ct_from_pydicom_data_is_stacked_along_its_normal(testdata_file: Callable[[str], Path]) -> None:
    """eCT_Supplemental.dcm: 2 frames, IOP (-1,0,0 / 0,1,0) so the normal is -z; frame 1 (z=-149) lies
    before frame 0 (z=-159) along it. HU = stored - 1024 from the shared PixelValueTransformation."""
    path = testdata_file("eCT_Supplemental.dcm")
    volume = read_volume(path)
    expected_affine = np.array(
        [
            [-0.388672, 0.0, 0.0, 99.5],
            [0.0, 0.388672, 0.0, -301.5],
            [0.0, 0.0, -10.0, -149.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    peers.assert_same_geometry(volume.affine, expected_affine)
    frames = peers.hu_of(pydicom.dcmread(path))  # [i, j, frame]
    peers.assert_same_voxels(volume.array, frames[:, :, ::-1])


def test_enhanced_mr_without_geometry_keeps_its_frames(testdata_file: Callable[[str], Path]) -> None:
    """emri_small.dcm has no functional-group geometry; its ten 64 x 64 frames are still one volume."""
    path = testdata_file("emri_small.dcm")
    volume = read_volume(path)
    assert volume.shape == (64, 64, 10)
    peers.assert_same_voxels(volume.array, peers.hu_of(pydicom.dcmread(path)))
