"""FHIR R4 (fhir.resources R4B) DiagnosticReport, Observations and ImagingStudy from results, and their delivery.

The bundle is a transaction whose entries are conditional creates keyed on deterministic identifiers, so
posting the same results twice (a retried job) creates nothing new on the server. Logs carry the endpoint,
status codes and attempt numbers only: never a patient reference, UID or value.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import pydicom
from fhir.resources.R4B.bundle import Bundle

from vesalius.core.errors import InputError, VesaliusError
from vesalius.core.results import ClassificationResult, ModelIdentity, NoduleResult, Result, SegmentationResult
from vesalius.writers.seg import segment_codes
from vesalius.writers.uids import derived_uid

__all__ = [
    "FhirDeliveryError",
    "diagnostic_report_bundle",
    "post_bundle",
    "write_bundle",
]

logger = logging.getLogger(__name__)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"
IDENTIFIER_URI = "urn:ietf:rfc:3986"
CLASS_SYSTEM = "urn:vesalius:class"
"""Code system for a model's own class names (no public terminology names them)."""

Json = dict[str, Any]


class FhirDeliveryError(VesaliusError):
    """A FHIR endpoint refused the bundle or could not be reached within the allowed attempts."""


def _urn(*parts: str) -> str:
    """A deterministic ``urn:uuid:`` (from the same hash as the DICOM UIDs) for fullUrl and identifiers."""
    return f"urn:uuid:{uuid.UUID(int=int(derived_uid(*parts).removeprefix('2.25.')))}"


def _quantity(value: float, unit: str, code: str) -> Json:
    return {"value": round(float(value), 6), "unit": unit, "system": UCUM, "code": code}


def _concept(system: str, code: str, display: str, text: str | None = None) -> Json:
    concept: Json = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        concept["text"] = text
    return concept


def _series_uid(result: Result) -> str:
    if isinstance(result, SegmentationResult):
        uid = result.labels.identity.series_instance_uid
        if not uid:
            raise InputError("segmentation result: its label volume names no source SeriesInstanceUID")
        return uid
    return result.series_instance_uid


def _observation(key: str, code: Json, context: Json, **values: Any) -> Json:
    """One Observation with the fields every measurement shares (status, subject, device, study, time)."""
    head: Json = {"resourceType": "Observation", "identifier": [{"system": IDENTIFIER_URI, "value": key}]}
    return head | {"code": code} | context | values


def _segmentation_observations(result: SegmentationResult, series: str, context: Json) -> list[Json]:
    observations = []
    volumes = result.volumes_ml()
    for index in sorted(result.label_names):
        name = result.label_names[index]
        volume = volumes[name]
        _, property_type = segment_codes(name)
        site = {"text": name}
        if property_type.value != "85756007":  # a known organ or lesion, not the generic "Tissue"
            site = _concept(SNOMED, property_type.value, property_type.meaning, name)
        key = _urn(series, result.model.sha256, "fhir-volume", str(index))
        code = _concept(SNOMED, "118565006", "Volume", f"{name} volume")
        observations.append(
            _observation(key, code, context, bodySite=site, valueQuantity=_quantity(volume, "mL", "mL"))
        )
    return observations


def _nodule_observations(result: NoduleResult, context: Json) -> list[Json]:
    observations = []
    for rank, finding in enumerate(result.nodules, start=1):
        components = [
            {"code": {"text": f"nodule centre {axis} (DICOM patient LPS)"}, "valueQuantity": _quantity(v, "mm", "mm")}
            for axis, v in zip("xyz", finding.centre, strict=True)
        ]
        components.append(
            {
                "code": _concept(DICOM_DCM, "122157", "Probability"),
                "valueQuantity": _quantity(finding.probability, "1", "1"),
            }
        )
        if finding.malignancy is not None:
            components.append(
                {
                    "code": _concept(DICOM_DCM, "111047", "Probability of cancer"),
                    "valueQuantity": _quantity(finding.malignancy, "1", "1"),
                }
            )
        key = _urn(result.series_instance_uid, result.model.sha256, "fhir-nodule", str(rank))
        code = _concept(SNOMED, "81827009", "Diameter", f"nodule {rank} diameter")
        body_site = _concept(SNOMED, "27925004", "Nodule", f"nodule {rank}")
        observations.append(
            _observation(
                key,
                code,
                context,
                bodySite=body_site,
                valueQuantity=_quantity(finding.diameter_mm, "mm", "mm"),
                component=components,
            )
        )
    return observations


def _classification_observations(result: ClassificationResult, context: Json) -> list[Json]:
    series, sha = result.series_instance_uid, result.model.sha256
    heads = [("", result.probabilities), *((f"{target}: ", probs) for target, probs in sorted(result.extra.items()))]
    observations = []
    for prefix, probabilities in heads:
        for name, probability in probabilities.items():
            label = f"{prefix}{name}"
            code = _concept(CLASS_SYSTEM, label, label, f"probability of {label}")
            key = _urn(series, sha, "fhir-class", label)
            observations.append(_observation(key, code, context, valueQuantity=_quantity(probability, "1", "1")))
    predicted = _concept(CLASS_SYSTEM, result.predicted, result.predicted)
    code = _concept(DICOM_DCM, "121071", "Finding", "predicted class")
    observations.append(
        _observation(_urn(series, sha, "fhir-prediction"), code, context, valueCodeableConcept=predicted)
    )
    if result.grade is not None:
        code = {"text": "grade"}
        observations.append(_observation(_urn(series, sha, "fhir-grade"), code, context, valueInteger=result.grade))
    return observations


def _conclusion(result: Result) -> str:
    """One plain sentence per result, for a reader of the report (values only, nothing identifying)."""
    by = f"({result.model.name} {result.model.version})"
    if isinstance(result, SegmentationResult):
        return "Volumes: " + "; ".join(f"{n} {v:.1f} mL" for n, v in result.volumes_ml().items()) + f" {by}."
    if isinstance(result, NoduleResult):
        if not result.nodules:
            return f"No nodule at the operating point {by}."
        listed = "; ".join(f"{n.diameter_mm:.1f} mm (p={n.probability:.2f})" for n in result.nodules)
        return f"{len(result.nodules)} nodule(s): {listed} {by}."
    grade = "" if result.grade is None else f", grade {result.grade}"
    return f"Predicted {result.predicted} (p={result.probabilities[result.predicted]:.2f}){grade} {by}."


def _device(model: ModelIdentity) -> Json:
    return {
        "resourceType": "Device",
        "identifier": [{"system": "urn:vesalius:model-sha256", "value": model.sha256}],
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "version": [{"value": model.version}],
        "manufacturer": "Vesalius",
    }


def _imaging_study(
    study_instance_uid: str,
    series_modalities: Mapping[str, str],
    dicom_outputs: Sequence[pydicom.Dataset],
    subject: Json,
) -> Json:
    series: list[Json] = [
        {"uid": uid, "modality": {"system": DICOM_DCM, "code": modality}} for uid, modality in series_modalities.items()
    ]
    for ds in dicom_outputs:
        sop_class = {"system": IDENTIFIER_URI, "code": f"urn:oid:{ds.SOPClassUID}"}
        series.append(
            {
                "uid": str(ds.SeriesInstanceUID),
                "modality": {"system": DICOM_DCM, "code": str(ds.Modality)},
                "instance": [{"uid": str(ds.SOPInstanceUID), "sopClass": sop_class}],
            }
        )
    return {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_instance_uid}"}],
        "status": "available",
        "subject": subject,
        "series": series,
    }


def _entry(full_url: str, resource: Json, if_none_exist: str) -> Json:
    """A conditional create: the server keeps the existing resource when the identifier is already known."""
    request = {"method": "POST", "url": resource["resourceType"], "ifNoneExist": if_none_exist}
    return {"fullUrl": full_url, "resource": resource, "request": request}


def diagnostic_report_bundle(
    results: Sequence[Result],
    *,
    study_instance_uid: str,
    issued: datetime,
    patient_reference: str | None = None,
    modality: str = "OT",
    dicom_outputs: Sequence[pydicom.Dataset] = (),
    status: Literal["final", "preliminary"] = "preliminary",
) -> Bundle:
    """A transaction Bundle: one DiagnosticReport (LOINC 18748-4), its Observations, the ImagingStudy of the
    source series (plus the SEG/SR objects in ``dicom_outputs``) and a Device per model.

    ``issued`` must carry a time zone (FHIR instants do). ``modality`` is used for series whose result does not
    say (nodule and classification results). ``status`` defaults to "preliminary": no one has verified the results.
    """
    if not results:
        raise InputError(f"study {study_instance_uid}: no results to report")
    if issued.tzinfo is None:
        raise InputError(f"study {study_instance_uid}: 'issued' needs a time zone (FHIR instant), got {issued}")
    subject = {"reference": patient_reference} if patient_reference else {"display": "unidentified patient"}
    when = issued.isoformat()
    series_modalities: dict[str, str] = {}
    for result in results:
        labels_modality = result.labels.modality if isinstance(result, SegmentationResult) else None
        series_modalities.setdefault(_series_uid(result), labels_modality or modality)
    study_url = _urn(study_instance_uid, "fhir-imaging-study")
    study = _imaging_study(study_instance_uid, series_modalities, dicom_outputs, subject)
    entries = [_entry(study_url, study, f"identifier=urn:dicom:uid|urn:oid:{study_instance_uid}")]
    observation_urls: list[str] = []
    key_parts = [study_instance_uid]
    for result in results:
        series, sha = _series_uid(result), result.model.sha256
        key_parts += [series, sha]
        device_url = _urn(sha, "fhir-device")
        if all(entry["fullUrl"] != device_url for entry in entries):
            entries.append(_entry(device_url, _device(result.model), f"identifier=urn:vesalius:model-sha256|{sha}"))
        context: Json = {
            "status": status,
            "issued": when,
            "effectiveDateTime": when,
            "device": {"reference": device_url},
            "derivedFrom": [{"reference": study_url}],
        }
        if patient_reference:
            context["subject"] = {"reference": patient_reference}
        if isinstance(result, SegmentationResult):
            observations = _segmentation_observations(result, series, context)
        elif isinstance(result, NoduleResult):
            observations = _nodule_observations(result, context)
        else:
            observations = _classification_observations(result, context)
        for observation in observations:
            key = observation["identifier"][0]["value"]
            observation_urls.append(key)
            entries.append(_entry(key, observation, f"identifier={IDENTIFIER_URI}|{key}"))
    report_key = _urn(*key_parts, "fhir-report")
    report: Json = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": IDENTIFIER_URI, "value": report_key}],
        "status": status,
        "category": [_concept("http://terminology.hl7.org/CodeSystem/v2-0074", "RAD", "Radiology")],
        "code": _concept(LOINC, "18748-4", "Diagnostic imaging study"),
        "effectiveDateTime": when,
        "issued": when,
        "imagingStudy": [{"reference": study_url}],
        "result": [{"reference": url} for url in observation_urls],
        "conclusion": " ".join(_conclusion(result) for result in results),
    }
    if patient_reference:
        report["subject"] = {"reference": patient_reference}
    entries.append(_entry(report_key, report, f"identifier={IDENTIFIER_URI}|{report_key}"))
    return Bundle.model_validate({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def write_bundle(bundle: Bundle, path: Path | str) -> Path:
    """Write the bundle as FHIR JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=".writing-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(bundle.model_dump_json(indent=2))
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    return path


def _retryable(status_code: int) -> bool:
    return status_code in (408, 429) or status_code >= 500


def post_bundle(
    bundle: Bundle,
    url: str,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    backoff_s: float = 1.0,
    headers: Mapping[str, str] | None = None,
    client: httpx.Client | None = None,
) -> Json:
    """POST the transaction bundle to a FHIR base URL; return the server's response bundle as JSON.

    Network errors, timeouts, 408, 429 and 5xx are retried ``retries`` times with exponential back-off
    (``backoff_s``, doubled each time); any other refusal fails at once. Raises FhirDeliveryError with the
    endpoint, the status and the start of the server's message.
    """
    if retries < 0:
        raise ValueError("retries must be >= 0")
    body = bundle.model_dump_json()
    request_headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json", **(headers or {})}
    own_client = client is None
    http = client or httpx.Client(timeout=timeout)
    try:
        problem = ""
        for attempt in range(1, retries + 2):
            try:
                response = http.post(url, content=body, headers=request_headers, timeout=timeout)
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
                logger.warning("FHIR post to %s, attempt %d: %s", url, attempt, type(error).__name__)
            else:
                if response.is_success:
                    logger.info("FHIR post to %s: HTTP %d on attempt %d", url, response.status_code, attempt)
                    return response.json() if response.content else {}
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                logger.warning("FHIR post to %s, attempt %d: HTTP %d", url, attempt, response.status_code)
                if not _retryable(response.status_code):
                    raise FhirDeliveryError(f"FHIR endpoint {url} refused the bundle: {problem}")
            if attempt <= retries:
                time.sleep(backoff_s * 2 ** (attempt - 1))
        raise FhirDeliveryError(f"FHIR endpoint {url}: no success after {retries + 1} attempts; last: {problem}")
    finally:
        if own_client:
            http.close()
