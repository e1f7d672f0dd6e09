"""DICOM SR TID 1500: each result kind passes dciodvfy, reads back with highdicom, and holds its values."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from tests.writers.conftest import CtCase, dciodvfy_errors, model
from vesalius.core.errors import InputError
from vesalius.core.results import ClassificationResult, NoduleFinding, NoduleResult, SegmentationResult
from vesalius.writers.seg import segmentation_to_seg, write_dicom
from vesalius.writers.sr import result_to_sr


def _items(content: pydicom.Sequence) -> Iterator[pydicom.Dataset]:
    for item in content:
        yield item
        yield from _items(item.get("ContentSequence", []))


def _numbers(sr: pydicom.Dataset) -> list[tuple[str, float, str]]:
    """(concept name, value, UCUM unit) of every NUM item in the content tree."""
    return [
        (
            item.ConceptNameCodeSequence[0].CodeMeaning,
            float(item.MeasuredValueSequence[0].NumericValue),
            item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue,
        )
        for item in _items(sr.ContentSequence)
        if item.ValueType == "NUM"
    ]


def _codes(sr: pydicom.Dataset) -> list[tuple[str, str]]:
    """(concept name, coded value meaning) of every CODE item."""
    return [
        (item.ConceptNameCodeSequence[0].CodeMeaning, item.ConceptCodeSequence[0].CodeMeaning)
        for item in _items(sr.ContentSequence)
        if item.ValueType == "CODE"
    ]


def _written(sr: pydicom.Dataset, folder: Path) -> hd.sr.Comprehensive3DSR:
    """Write, check with dciodvfy, and read back with highdicom."""
    path = write_dicom(sr, folder)
    assert dciodvfy_errors(path) == []
    read = hd.sr.srread(path)
    assert isinstance(read, hd.sr.Comprehensive3DSR)
    return read


def _observer_is_the_model(sr: pydicom.Dataset) -> None:
    texts = {
        (item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue)
        for item in _items(sr.ContentSequence)
        if item.ValueType == "TEXT"
    }
    assert ("Device Observer Name", "toy-model") in texts
    assert ("Device Observer Model Name", "toy-model 1.2.0") in texts


def test_label_volumes_reference_the_seg_segments(ct: CtCase, segmentation: SegmentationResult, tmp_path: Path) -> None:
    seg = segmentation_to_seg(segmentation, ct.datasets)
    sr = _written(result_to_sr(segmentation, ct.datasets, seg=seg), tmp_path)
    volumes = segmentation.volumes_ml()
    found = [(value, unit) for name, value, unit in _numbers(sr) if name == "Volume"]
    assert found == [(pytest.approx(volumes["liver"]), "mL"), (pytest.approx(volumes["nodule"]), "mL")]
    assert volumes["liver"] == pytest.approx(6 * 7 * 3 * 0.7 * 0.8 * 2.5 / 1000)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [group.referenced_segment.referenced_segment_numbers for group in groups] == [[1], [2]]
    assert {group.referenced_segment.referenced_sop_instance_uid for group in groups} == {seg.SOPInstanceUID}
    _observer_is_the_model(sr)


def test_label_volumes_without_a_seg_reference_the_source_images(
    ct: CtCase, segmentation: SegmentationResult, tmp_path: Path
) -> None:
    sr = _written(result_to_sr(segmentation, ct.datasets), tmp_path)
    assert [value for name, value, _ in _numbers(sr) if name == "Volume"] == pytest.approx(
        list(segmentation.volumes_ml().values())
    )
    images = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in _items(sr.ContentSequence)
        if item.ValueType == "IMAGE"
    }
    assert images == set(ct.series.sop_instance_uids)


def _nodules(series_uid: str, sha256: str = "a" * 64) -> NoduleResult:
    return NoduleResult(
        series_instance_uid=series_uid,
        findings=(
            NoduleFinding(
                centre=(-110.5, -80.25, 45.0), diameter_mm=8.5, probability=0.93, nodule=True, malignancy=0.4
            ),
            NoduleFinding(centre=(-100.0, -90.0, 50.0), diameter_mm=5.25, probability=0.71, nodule=True),
            NoduleFinding(centre=(-105.0, -85.0, 47.5), diameter_mm=3.0, probability=0.12, nodule=False),
        ),
        model=model(sha256=sha256),
    )


def test_nodules_at_the_operating_point_have_centre_diameter_and_probabilities(ct: CtCase, tmp_path: Path) -> None:
    sr = _written(result_to_sr(_nodules(ct.series.series_uid), ct.datasets), tmp_path)
    numbers = _numbers(sr)
    assert [(v, u) for n, v, u in numbers if n == "Diameter"] == [(8.5, "mm"), (5.25, "mm")]
    assert [(v, u) for n, v, u in numbers if n == "Probability"] == [(0.93, "1"), (0.71, "1")]
    assert [v for n, v, _ in numbers if n == "Probability of cancer"] == [0.4]
    points = [item for item in _items(sr.ContentSequence) if item.ValueType == "SCOORD3D"]
    assert [item.GraphicType for item in points] == ["POINT", "POINT"]
    assert [list(map(float, item.GraphicData)) for item in points] == [[-110.5, -80.25, 45.0], [-100.0, -90.0, 50.0]]
    assert {item.ReferencedFrameOfReferenceUID for item in points} == {ct.series.identity.frame_of_reference_uid}
    _observer_is_the_model(sr)


def test_no_nodule_is_reported_as_absent(ct: CtCase, tmp_path: Path) -> None:
    result = NoduleResult(ct.series.series_uid, (), model())
    sr = _written(result_to_sr(result, ct.datasets), tmp_path)
    assert ("Nodule", "Absent") in _codes(sr)
    assert _numbers(sr) == []


def _classification(series_uid: str) -> ClassificationResult:
    return ClassificationResult(
        series_instance_uid=series_uid,
        probabilities={"normal": 0.25, "pneumonia": 0.75},
        predicted="pneumonia",
        model=model(),
        grade=2,
        extra={"severity": {"mild": 0.6, "severe": 0.4}},
    )


def test_class_probabilities_predicted_class_and_grade(ct: CtCase, tmp_path: Path) -> None:
    sr = _written(result_to_sr(_classification(ct.series.series_uid), ct.datasets), tmp_path)
    assert sr.content.get_volumetric_roi_measurement_groups() == []  # image-level, no region
    assert len(sr.content.get_image_measurement_groups()) == 5  # 2 + 2 class probabilities, 1 prediction
    values = [v for n, v, _ in _numbers(sr) if n == "Probability"]
    assert values == [0.25, 0.75, 0.6, 0.4]
    assert [v for n, v, _ in _numbers(sr) if n == "Grade"] == [2.0]
    assert ("Finding", "pneumonia") in _codes(sr)


def test_sr_uids_are_deterministic_and_change_with_the_model(ct: CtCase) -> None:
    first = result_to_sr(_nodules(ct.series.series_uid), ct.datasets)
    again = result_to_sr(_nodules(ct.series.series_uid), ct.datasets)
    other = result_to_sr(_nodules(ct.series.series_uid, sha256="b" * 64), ct.datasets)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID != first.SeriesInstanceUID


def test_source_of_another_series_is_refused(ct: CtCase) -> None:
    with pytest.raises(InputError, match=r"1\.2\.3\.4\.5"):
        result_to_sr(_classification("1.2.3.4.5"), ct.datasets)
