"""DICOM SEG: segments map back to the same voxels of the same source instances, and dciodvfy accepts the file."""

from __future__ import annotations

import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from tests.writers.conftest import SHAPE, CtCase, dciodvfy_errors, label_volume, model, two_labels
from vesalius.core.errors import InputError
from vesalius.core.results import SegmentationResult
from vesalius.core.volume import Volume
from vesalius.writers.seg import segment_codes, segmentation_to_seg, write_dicom
from vesalius.writers.uids import derived_uid


def _frames_of(seg: hd.seg.Segmentation, ct: CtCase, segment_number: int) -> np.ndarray:
    """The segment's masks as (k, rows, columns), one per source SOP instance in k order."""
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=ct.series.sop_instance_uids, segment_numbers=[segment_number]
    )
    return np.asarray(pixels[..., 0])


def _expected_frames(labels: np.ndarray, value: int) -> np.ndarray:
    return np.transpose(labels == value, (2, 1, 0))


@pytest.mark.parametrize("with_uids", [True, False], ids=["match-by-uid", "match-by-position"])
def test_segments_map_back_to_the_same_voxels_of_the_same_instances(
    ct: CtCase, tmp_path: Path, with_uids: bool
) -> None:
    labels = two_labels()
    result = SegmentationResult(
        label_volume(ct.series, labels, with_uids=with_uids), {1: "liver", 3: "nodule"}, model()
    )
    path = write_dicom(segmentation_to_seg(result, ct.datasets), tmp_path / "out")
    seg = hd.seg.segread(path)
    assert seg.number_of_segments == 2
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["liver", "nodule"]
    np.testing.assert_array_equal(_frames_of(seg, ct, 1), _expected_frames(labels, 1))
    np.testing.assert_array_equal(_frames_of(seg, ct, 2), _expected_frames(labels, 3))
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(ct.series.sop_instance_uids)
    assert seg.StudyInstanceUID == ct.series.study_uid
    assert seg.FrameOfReferenceUID == ct.series.identity.frame_of_reference_uid


def test_seg_passes_dciodvfy_and_names_the_algorithm(
    ct: CtCase, segmentation: SegmentationResult, tmp_path: Path
) -> None:
    path = write_dicom(segmentation_to_seg(segmentation, ct.datasets), tmp_path / "out")
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    description = seg.SegmentSequence[0]
    algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("toy-model", "1.2.0")
    assert description.SegmentAlgorithmType == "AUTOMATIC"
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SCT Liver
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"  # SCT Nodule


def test_uids_are_deterministic_and_change_with_the_model(ct: CtCase, segmentation: SegmentationResult) -> None:
    first = segmentation_to_seg(segmentation, ct.datasets)
    again = segmentation_to_seg(segmentation, list(reversed(ct.datasets)))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID == derived_uid(ct.series.series_uid, "a" * 64, "seg-instance")
    other_model = SegmentationResult(segmentation.labels, segmentation.label_names, model(sha256="b" * 64))
    other = segmentation_to_seg(other_model, ct.datasets)
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID != first.SeriesInstanceUID


def test_a_label_without_voxels_keeps_its_segment(ct: CtCase, tmp_path: Path) -> None:
    labels = two_labels()
    names = {1: "liver", 2: "spleen", 3: "nodule"}  # no voxel is 2
    path = write_dicom(
        segmentation_to_seg(SegmentationResult(label_volume(ct.series, labels), names, model()), ct.datasets), tmp_path
    )
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["liver", "spleen", "nodule"]
    np.testing.assert_array_equal(_frames_of(seg, ct, 3), _expected_frames(labels, 3))
    assert not _frames_of(seg, ct, 2).any()


def test_an_all_empty_label_map_is_written(ct: CtCase, tmp_path: Path) -> None:
    empty = SegmentationResult(label_volume(ct.series, np.zeros(SHAPE, np.uint8)), {1: "liver"}, model())
    path = write_dicom(segmentation_to_seg(empty, ct.datasets), tmp_path)
    assert dciodvfy_errors(path) == []
    assert not _frames_of(hd.seg.segread(path), ct, 1).any()


def test_labels_off_the_source_grid_are_refused_naming_the_series(ct: CtCase) -> None:
    shifted_affine = ct.series.affine.copy()
    shifted_affine[0, 3] += 1.0
    volume = label_volume(ct.series, two_labels())
    shifted = Volume(array=volume.array, affine=shifted_affine, identity=volume.identity)
    with pytest.raises(InputError, match=re.escape(ct.series.series_uid)) as caught:
        segmentation_to_seg(SegmentationResult(shifted, {1: "liver"}, model()), ct.datasets)
    assert "ImagePositionPatient" in str(caught.value)


def test_labels_of_another_size_are_refused(ct: CtCase) -> None:
    volume = label_volume(ct.series, two_labels())
    smaller = Volume(array=volume.array[:-1], affine=volume.affine, identity=volume.identity)
    with pytest.raises(InputError, match="rows x"):
        segmentation_to_seg(SegmentationResult(smaller, {1: "liver"}, model()), ct.datasets)


def test_missing_source_instances_are_refused(ct: CtCase, segmentation: SegmentationResult) -> None:
    with pytest.raises(InputError, match=re.escape(ct.series.series_uid)):
        segmentation_to_seg(segmentation, ct.datasets[:-1])


def test_unknown_label_names_get_the_generic_tissue_code() -> None:
    category, property_type = segment_codes("ground-glass opacity")
    assert (category.value, property_type.value) == ("85756007", "85756007")
    assert segment_codes("Left tumour")[1].value == "85756007"
    assert segment_codes("tumour")[1].meaning == "Tumor"


def test_write_dicom_names_the_file_after_the_instance(
    ct: CtCase, segmentation: SegmentationResult, tmp_path: Path
) -> None:
    seg = segmentation_to_seg(segmentation, ct.datasets)
    path = write_dicom(seg, tmp_path / "out")
    assert path.name == f"{seg.SOPInstanceUID}.dcm"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [path.name]


def test_the_dciodvfy_helper_reports_errors(ct: CtCase, segmentation: SegmentationResult, tmp_path: Path) -> None:
    """Guards the guard: a SEG missing a mandatory attribute must produce error lines."""
    seg = segmentation_to_seg(segmentation, ct.datasets)
    del seg.SegmentSequence
    path = write_dicom(seg, tmp_path)
    assert dciodvfy_errors(path)
