"""DICOM SR TID 1500 (Measurement Report, Comprehensive 3D SR) from results, built with highdicom.

One report per result: label volumes (mL) per segment, nodule centres (SCOORD3D point), diameters and
probabilities, class probabilities with the predicted class and grade. The observer is the model itself
(a device observer), so a reader sees which algorithm, version and package made every number.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from vesalius.core.errors import InputError
from vesalius.core.results import (
    ClassificationResult,
    ModelIdentity,
    NoduleFinding,
    NoduleResult,
    Result,
    SegmentationResult,
)
from vesalius.writers.seg import MANUFACTURER, coded_concept, segment_codes
from vesalius.writers.uids import derived_uid

__all__ = [
    "PRIVATE_SCHEME",
    "classification_to_sr",
    "nodules_to_sr",
    "result_to_sr",
    "segmentation_to_sr",
]

PRIVATE_SCHEME = "99VESALIUS"
"""Coding scheme for what no public terminology names: a model's own class names and its grade."""

_MILLILITRE = hd.sr.CodedConcept(value="mL", scheme_designator="UCUM", meaning="milliliter")
_MILLIMETRE = hd.sr.CodedConcept(value="mm", scheme_designator="UCUM", meaning="millimeter")
_NO_UNITS = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
_GRADE = hd.sr.CodedConcept(value="grade", scheme_designator=PRIVATE_SCHEME, meaning="Grade")
_IMAGING_PROCEDURE = hd.sr.CodedConcept(value="363679005", scheme_designator="SCT", meaning="Imaging procedure")

Group = hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
"""A measurement group of TID 1501 (image level) or TID 1411 (volumetric ROI)."""


def class_concept(name: str) -> hd.sr.CodedConcept:
    """A model's class name as a private code: the name itself when short, else a stable hash of it."""
    value = name if 0 < len(name) <= 16 and "\\" not in name else hashlib.sha256(name.encode()).hexdigest()[:16]
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=name[:64])


def _algorithm(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version[:64])


def _observation_context(model: ModelIdentity) -> hd.sr.ObservationContext:
    """The model as device observer; its UID depends on the package hash only, so it is the same in every report."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device-observer", model.sha256),
        name=model.name[:64],
        manufacturer_name=MANUFACTURER,
        model_name=f"{model.name} {model.version}"[:64],
        serial_number=model.sha256[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=coded_concept(codes.cid270.Device), observer_identifying_attributes=device
        )
    )


def _measurement(
    name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept, model: ModelIdentity
) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=_algorithm(model))


def _checked_source(series_uid: str, source: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The source datasets, after checking they are the result's series (the SR's evidence)."""
    if not source:
        raise InputError(f"series {series_uid}: no source instances given to reference in the SR")
    others = sorted({str(ds.SeriesInstanceUID) for ds in source} - {series_uid})
    if others:
        raise InputError(f"series {series_uid}: source instances belong to other series: {', '.join(others[:3])}")
    return list(source)


def _report(
    model: ModelIdentity,
    series_uid: str,
    kind: str,
    evidence: Sequence[pydicom.Dataset],
    groups: Sequence[Group],
    series_number: int,
    manufacturer: str,
    private_codes: bool = False,
) -> hd.sr.Comprehensive3DSR:
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(model),
        procedure_reported=_IMAGING_PROCEDURE,
        imaging_measurements=list(groups),
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report,
        series_instance_uid=derived_uid(series_uid, model.sha256, f"sr-{kind}-series"),
        series_number=series_number,
        sop_instance_uid=derived_uid(series_uid, model.sha256, f"sr-{kind}-instance"),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"{model.name} {model.version} SR"[:64],
    )
    if not private_codes:
        return sr
    scheme = pydicom.Dataset()  # declares the private scheme (PS3.3 C.12.1.1.8) for receivers that look it up
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "Vesalius model classes and grades"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _segment_numbers(seg: pydicom.Dataset, names: Sequence[str]) -> dict[str, int]:
    """Segment number of each label name in ``seg``, matched by SegmentLabel."""
    numbers = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    missing = [name for name in names if name[:64] not in numbers]
    if missing:
        raise InputError(f"SEG {seg.SOPInstanceUID}: no segment labelled {missing[0]!r} (has {sorted(numbers)})")
    return {name: numbers[name[:64]] for name in names}


def segmentation_to_sr(
    result: SegmentationResult,
    source: Sequence[pydicom.Dataset],
    *,
    seg: pydicom.Dataset | None = None,
    series_number: int = 9002,
    manufacturer: str = MANUFACTURER,
) -> hd.sr.Comprehensive3DSR:
    """Volume (mL) of each named label: a volumetric ROI on its SEG segment when ``seg`` is given, else a
    measurement group over the source images."""
    series_uid = result.labels.identity.series_instance_uid or str(source[0].SeriesInstanceUID if source else "")
    evidence = _checked_source(series_uid, source)
    volumes = result.volumes_ml()
    names = [result.label_names[index] for index in sorted(result.label_names)]
    numbers = _segment_numbers(seg, names) if seg is not None else {}
    source_images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in evidence]
    groups: list[Group] = []
    for index in sorted(result.label_names):
        name = result.label_names[index]
        tracking = hd.sr.TrackingIdentifier(
            uid=derived_uid(series_uid, result.model.sha256, "sr-label", str(index)), identifier=name[:64]
        )
        volume = [_measurement(coded_concept(codes.SCT.Volume), volumes[name], _MILLILITRE, result.model)]
        finding_type = segment_codes(name)[1]
        if seg is None:
            group: Group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=finding_type,
                algorithm_id=_algorithm(result.model),
                measurements=volume,
                source_images=source_images,
            )
        else:
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=numbers[name],
                source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
            )
            group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=segment,
                finding_type=finding_type,
                algorithm_id=_algorithm(result.model),
                measurements=volume,
            )
        groups.append(group)
    if seg is not None:
        evidence = [*evidence, seg]
    return _report(result.model, series_uid, "segmentation", evidence, groups, series_number, manufacturer)


def _nodule_group(
    finding: NoduleFinding, rank: int, result: NoduleResult, frame_of_reference_uid: str
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """One nodule: its centre as an SCOORD3D point in the source frame of reference, and its measurements."""
    model = result.model
    measurements = [
        _measurement(coded_concept(codes.SCT.Diameter), finding.diameter_mm, _MILLIMETRE, model),
        _measurement(coded_concept(codes.DCM.Probability), finding.probability, _NO_UNITS, model),
    ]
    if finding.malignancy is not None:
        measurements.append(
            _measurement(coded_concept(codes.DCM.ProbabilityOfCancer), finding.malignancy, _NO_UNITS, model)
        )
    centre = hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([finding.centre], dtype=np.float64),
        frame_of_reference_uid=frame_of_reference_uid,
        source_series=hd.sr.SourceSeriesForSegmentation(result.series_instance_uid),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(result.series_instance_uid, model.sha256, "sr-nodule", str(rank)),
            identifier=f"nodule {rank}",
        ),
        referenced_volume_surface=centre,
        finding_type=coded_concept(codes.SCT.Nodule),
        algorithm_id=_algorithm(model),
        measurements=measurements,
    )


def _no_nodule_group(
    result: NoduleResult, evidence: Sequence[pydicom.Dataset]
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """An explicit "nodule: absent", so a negative read is told apart from a missing report."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(result.series_instance_uid, result.model.sha256, "sr-no-nodule"), identifier="no nodule"
        ),
        finding_type=coded_concept(codes.SCT.Nodule),
        algorithm_id=_algorithm(result.model),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=coded_concept(codes.SCT.Nodule), value=coded_concept(codes.SCT.Absent))
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in evidence],
    )


def nodules_to_sr(
    result: NoduleResult,
    source: Sequence[pydicom.Dataset],
    *,
    series_number: int = 9002,
    manufacturer: str = MANUFACTURER,
) -> hd.sr.Comprehensive3DSR:
    """One volumetric ROI per nodule at the operating point (``result.nodules``), numbered by rank from 1;
    an explicit "nodule absent" group when there is none."""
    evidence = _checked_source(result.series_instance_uid, source)
    frames_of_reference = {str(ds.FrameOfReferenceUID) for ds in evidence}
    if len(frames_of_reference) != 1:
        raise InputError(f"series {result.series_instance_uid}: source instances have no single FrameOfReferenceUID")
    frame_of_reference_uid = frames_of_reference.pop()
    groups: list[Group] = [
        _nodule_group(finding, rank, result, frame_of_reference_uid)
        for rank, finding in enumerate(result.nodules, start=1)
    ]
    if not groups:
        groups.append(_no_nodule_group(result, evidence))
    return _report(result.model, result.series_instance_uid, "nodules", evidence, groups, series_number, manufacturer)


def classification_to_sr(
    result: ClassificationResult,
    source: Sequence[pydicom.Dataset],
    *,
    series_number: int = 9002,
    manufacturer: str = MANUFACTURER,
) -> hd.sr.Comprehensive3DSR:
    """Image-level groups: the probability of each class (and of each extra head's classes), then the
    predicted class as a qualitative evaluation with the grade when the task is ordinal."""
    evidence = _checked_source(result.series_instance_uid, source)
    model, series_uid = result.model, result.series_instance_uid
    source_images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in evidence]
    heads = [("", result.probabilities), *((f"{target}: ", probs) for target, probs in sorted(result.extra.items()))]
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    for prefix, probabilities in heads:
        for name, probability in probabilities.items():
            label = f"{prefix}{name}"
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=derived_uid(series_uid, model.sha256, "sr-class", label), identifier=label[:64]
                    ),
                    finding_type=class_concept(label),
                    algorithm_id=_algorithm(model),
                    measurements=[_measurement(coded_concept(codes.DCM.Probability), probability, _NO_UNITS, model)],
                    source_images=source_images,
                )
            )
    grade = [] if result.grade is None else [_measurement(_GRADE, result.grade, _NO_UNITS, model)]
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid(series_uid, model.sha256, "sr-prediction"), identifier="prediction"
            ),
            algorithm_id=_algorithm(model),
            measurements=grade or None,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=coded_concept(codes.DCM.Finding), value=class_concept(result.predicted)
                )
            ],
            source_images=source_images,
        )
    )
    return _report(model, series_uid, "classification", evidence, groups, series_number, manufacturer, True)


def result_to_sr(
    result: Result,
    source: Sequence[pydicom.Dataset],
    *,
    seg: pydicom.Dataset | None = None,
    series_number: int = 9002,
    manufacturer: str = MANUFACTURER,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report for any result kind (``seg`` is used for segmentation results only)."""
    if isinstance(result, SegmentationResult):
        return segmentation_to_sr(result, source, seg=seg, series_number=series_number, manufacturer=manufacturer)
    if isinstance(result, NoduleResult):
        return nodules_to_sr(result, source, series_number=series_number, manufacturer=manufacturer)
    return classification_to_sr(result, source, series_number=series_number, manufacturer=manufacturer)
