"""FHIR: the bundle parses back with the expected resources and values; delivery retries, then succeeds or fails."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.http_server import FhirServer
from tests.writers.conftest import model
from vesalius.core.errors import InputError
from vesalius.core.results import (
    ClassificationResult,
    NoduleFinding,
    NoduleResult,
    Result,
    SegmentationResult,
)
from vesalius.core.volume import DicomIdentity, Volume
from vesalius.writers.fhir import FhirDeliveryError, diagnostic_report_bundle, post_bundle, write_bundle

STUDY = "1.2.826.0.1.3680043.8.498.1"
ISSUED = dt.datetime(2024, 3, 14, 10, 30, tzinfo=dt.UTC)


def _results() -> list[Result]:
    labels = np.zeros((10, 10, 4), dtype=np.uint8)
    labels[:5, :4, :2] = 1  # 40 voxels of 2 mm^3 = 0.08 mL
    volume = Volume.from_geometry(labels, (1.0, 1.0, 2.0), modality="CT", identity=DicomIdentity(STUDY, f"{STUDY}.1"))
    return [
        SegmentationResult(volume, {1: "liver", 2: "spleen"}, model()),
        NoduleResult(
            f"{STUDY}.2",
            (
                NoduleFinding((-10.0, 20.5, 30.0), 7.5, 0.9, True, malignancy=0.35),
                NoduleFinding((0.0, 0.0, 0.0), 3.0, 0.2, False),
            ),
            model(sha256="c" * 64, name="nodules"),
        ),
        ClassificationResult(
            f"{STUDY}.3", {"normal": 0.3, "pneumonia": 0.7}, "pneumonia", model(sha256="d" * 64, name="cxr"), grade=1
        ),
    ]


def _by_type(bundle: Bundle, resource_type: str) -> list[Any]:
    return [entry.resource for entry in bundle.entry if entry.resource.get_resource_type() == resource_type]


def test_bundle_parses_back_with_the_report_observations_and_study(tmp_path: Path) -> None:
    bundle = diagnostic_report_bundle(
        _results(), study_instance_uid=STUDY, issued=ISSUED, patient_reference="Patient/p1", modality="CR"
    )
    read = Bundle.model_validate_json(write_bundle(bundle, tmp_path / "report.json").read_text())
    assert read.type == "transaction"
    observations = _by_type(read, "Observation")
    volumes = {
        o.bodySite.text: (float(o.valueQuantity.value), o.valueQuantity.code)
        for o in observations
        if o.code.text.endswith("volume")
    }
    assert volumes == {"liver": (pytest.approx(0.08), "mL"), "spleen": (0.0, "mL")}
    assert {o.valueQuantity.system for o in observations if o.valueQuantity} == {"http://unitsofmeasure.org"}

    (nodule,) = [o for o in observations if o.code.coding and o.code.coding[0].code == "81827009"]
    assert (float(nodule.valueQuantity.value), nodule.valueQuantity.code) == (7.5, "mm")
    components = {c.code.text or c.code.coding[0].display: float(c.valueQuantity.value) for c in nodule.component}
    assert components == {
        "nodule centre x (DICOM patient LPS)": -10.0,
        "nodule centre y (DICOM patient LPS)": 20.5,
        "nodule centre z (DICOM patient LPS)": 30.0,
        "Probability": 0.9,
        "Probability of cancer": 0.35,
    }

    probabilities = {
        o.code.text: float(o.valueQuantity.value)
        for o in observations
        if o.code.text and o.code.text.startswith("probability of")
    }
    assert probabilities == {"probability of normal": 0.3, "probability of pneumonia": 0.7}
    (predicted,) = [o for o in observations if o.valueCodeableConcept is not None]
    assert predicted.valueCodeableConcept.coding[0].code == "pneumonia"
    assert [o.valueInteger for o in observations if o.valueInteger is not None] == [1]
    assert len(observations) == 2 + 1 + 2 + 2

    (report,) = _by_type(read, "DiagnosticReport")
    assert report.status == "preliminary"
    assert report.code.coding[0].code == "18748-4"
    assert report.subject.reference == "Patient/p1"
    full_urls = {
        entry.resource.id or entry.fullUrl
        for entry in read.entry
        if entry.resource.get_resource_type() == "Observation"
    }
    assert {ref.reference for ref in report.result} == full_urls
    assert "7.5 mm" in report.conclusion
    assert "pneumonia" in report.conclusion

    (study,) = _by_type(read, "ImagingStudy")
    assert study.identifier[0].value == f"urn:oid:{STUDY}"
    assert [s.uid for s in study.series] == [f"{STUDY}.1", f"{STUDY}.2", f"{STUDY}.3"]
    assert [s.modality.code for s in study.series] == ["CT", "CR", "CR"]
    assert report.imagingStudy[0].reference == next(e.fullUrl for e in read.entry if e.resource is study)
    assert len(_by_type(read, "Device")) == 3


def test_the_same_results_give_the_same_bundle_and_another_model_does_not() -> None:
    first = diagnostic_report_bundle(_results(), study_instance_uid=STUDY, issued=ISSUED, patient_reference=None)
    again = diagnostic_report_bundle(_results(), study_instance_uid=STUDY, issued=ISSUED, patient_reference=None)
    assert first.model_dump_json() == again.model_dump_json()
    changed = _results()
    segmentation = changed[0]
    assert isinstance(segmentation, SegmentationResult)
    changed[0] = SegmentationResult(segmentation.labels, segmentation.label_names, model(sha256="b" * 64))
    other = diagnostic_report_bundle(changed, study_instance_uid=STUDY, issued=ISSUED)
    first_urls = {entry.fullUrl for entry in first.entry}
    other_urls = {entry.fullUrl for entry in other.entry}
    assert first_urls != other_urls
    (report,) = _by_type(first, "DiagnosticReport")
    assert report.subject is None


def test_a_naive_issue_time_is_refused() -> None:
    with pytest.raises(InputError, match="time zone"):
        diagnostic_report_bundle(_results(), study_instance_uid=STUDY, issued=dt.datetime(2024, 1, 1))


def _bundle() -> Bundle:
    return diagnostic_report_bundle(_results(), study_instance_uid=STUDY, issued=ISSUED)


def test_post_retries_server_errors_then_succeeds(fhir_server: type[FhirServer]) -> None:
    server = fhir_server([503, 502, 200])
    response = post_bundle(_bundle(), server.url, timeout=5, retries=3, backoff_s=0.01)
    assert response["type"] == "transaction-response"
    assert len(server.bodies) == 3
    assert set(server.content_types) == {"application/fhir+json"}
    assert Bundle.model_validate_json(server.bodies[-1]).type == "transaction"


def test_post_gives_up_after_the_allowed_retries(fhir_server: type[FhirServer]) -> None:
    server = fhir_server([500])
    with pytest.raises(FhirDeliveryError, match=r"no success after 3 attempts.*HTTP 500"):
        post_bundle(_bundle(), server.url, timeout=5, retries=2, backoff_s=0.01)
    assert len(server.bodies) == 3


def test_post_does_not_retry_a_refusal(fhir_server: type[FhirServer]) -> None:
    server = fhir_server([400, 200])
    with pytest.raises(FhirDeliveryError, match="refused the bundle: HTTP 400"):
        post_bundle(_bundle(), server.url, timeout=5, retries=3, backoff_s=0.01)
    assert len(server.bodies) == 1


def test_post_to_an_unreachable_endpoint_fails_clearly(fhir_server: type[FhirServer]) -> None:
    server = fhir_server([200])
    url = server.url
    server.close()
    with pytest.raises(FhirDeliveryError, match=r"no success after 2 attempts.*ConnectError"):
        post_bundle(_bundle(), url, timeout=2, retries=1, backoff_s=0.01)
