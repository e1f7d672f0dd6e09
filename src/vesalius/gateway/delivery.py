"""Sending a job's results on: SEG and SR by C-STORE to the PACS, the FHIR bundle to a server or a folder.

Delivery runs inside the job attempt, so a failed delivery fails the attempt and the queue retries the whole job.
That is safe because outputs are deterministic: the same SOP Instance UIDs are sent again (a PACS keeps one copy)
and the FHIR bundle is made of conditional creates (a server creates nothing twice).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vesalius.core.errors import InputError
from vesalius.gateway.jobs import JobOutput
from vesalius.gateway.scu import DicomPeer, DicomPeerError, send_instances

__all__ = ["DeliveryReport", "DeliverySettings", "deliver"]

LOGGER = logging.getLogger(__name__)
DICOM_KINDS = frozenset({"seg", "sr", "sc"})


class DeliverySettings(BaseModel):
    """Where results go. Nothing set: results stay in the job's output folder only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dicom_destination: str | None = Field(default=None, description="The PACS as AE@host:port.")
    calling_ae: str = "VESALIUS"
    dicom_retries: int = Field(default=3, ge=0)
    dicom_backoff_seconds: float = Field(default=0.5, ge=0)
    dicom_timeout_seconds: float = Field(default=30.0, gt=0)
    fhir_url: str | None = Field(default=None, description="FHIR base URL that takes transaction bundles.")
    fhir_headers: dict[str, str] = Field(default_factory=dict, description="E.g. Authorization; never logged.")
    fhir_retries: int = Field(default=3, ge=0)
    fhir_backoff_seconds: float = Field(default=1.0, ge=0)
    fhir_timeout_seconds: float = Field(default=30.0, gt=0)
    fhir_folder: Path | None = Field(default=None, description="Also (or instead) write each bundle here.")

    @field_validator("dicom_destination")
    @classmethod
    def _peer(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                DicomPeer.parse(value)
            except InputError as error:  # pydantic reports ValueErrors as validation errors
                raise ValueError(str(error)) from None
        return value

    @field_validator("fhir_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"fhir_url must start with http:// or https://, got {value!r}")
        return value

    @property
    def peer(self) -> DicomPeer | None:
        return None if self.dicom_destination is None else DicomPeer.parse(self.dicom_destination)


@dataclass
class DeliveryReport:
    """What was delivered where (counts and places only: no PHI)."""

    dicom_peer: str | None = None
    dicom_sent: list[str] = field(default_factory=list)
    """SOP Instance UIDs the peer accepted."""
    fhir_url: str | None = None
    fhir_posted: bool = False
    fhir_file: Path | None = None

    def as_summary(self) -> dict[str, object]:
        return {
            "dicom_peer": self.dicom_peer,
            "dicom_sent": len(self.dicom_sent),
            "fhir_url": self.fhir_url,
            "fhir_posted": self.fhir_posted,
            "fhir_file": None if self.fhir_file is None else self.fhir_file.name,
        }


def deliver(output_folder: Path, job_output: JobOutput, settings: DeliverySettings) -> DeliveryReport:
    """Send the job's DICOM outputs and FHIR bundle where ``settings`` say.

    Raises DicomPeerError when the PACS cannot be reached after the retries or refuses an instance, and
    FhirDeliveryError when the FHIR server refuses the bundle; the queue then retries the job.
    """
    output_folder = Path(output_folder)
    report = DeliveryReport()
    peer = settings.peer
    dicom = [item for item in job_output.files if item.kind in DICOM_KINDS]
    if peer is not None and dicom:
        report.dicom_peer = str(peer)
        sent = send_instances(
            [output_folder / item.name for item in dicom],
            peer,
            calling_ae=settings.calling_ae,
            retries=settings.dicom_retries,
            backoff_seconds=settings.dicom_backoff_seconds,
            timeout=settings.dicom_timeout_seconds,
        )
        if not sent.ok:
            refused = ", ".join(f"{r.sop_instance_uid} ({_status(r.status, r.error)})" for r in sent.failed[:4])
            raise DicomPeerError(f"DICOM peer {peer} refused {len(sent.failed)} of {len(dicom)} instances: {refused}")
        report.dicom_sent = [r.sop_instance_uid for r in sent.sent]
        LOGGER.info("delivered %d DICOM instances to %s", len(report.dicom_sent), peer)
    bundles = [output_folder / item.name for item in job_output.files if item.kind == "fhir"]
    for bundle_path in bundles:
        if settings.fhir_url is not None:
            _post(bundle_path, settings)
            report.fhir_url, report.fhir_posted = settings.fhir_url, True
        if settings.fhir_folder is not None:
            report.fhir_file = _copy_bundle(bundle_path, settings.fhir_folder)
    return report


def _status(status: int | None, error: str) -> str:
    return error if status is None else f"status 0x{status:04X}"


def _post(bundle_path: Path, settings: DeliverySettings) -> None:
    from fhir.resources.R4B.bundle import Bundle

    from vesalius.writers.fhir import post_bundle

    assert settings.fhir_url is not None
    bundle = Bundle.model_validate_json(bundle_path.read_text(encoding="utf-8"))
    post_bundle(
        bundle,
        settings.fhir_url,
        timeout=settings.fhir_timeout_seconds,
        retries=settings.fhir_retries,
        backoff_s=settings.fhir_backoff_seconds,
        headers=settings.fhir_headers,
    )


def _copy_bundle(bundle_path: Path, folder: Path) -> Path:
    """Copy atomically under a name fixed by the bundle's content minus its times, so a retried job overwrites
    its earlier copy instead of adding a second one."""
    data = bundle_path.read_bytes()
    name = f"DiagnosticReport-{_stable_digest(data)}.json"
    folder.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=".writing-", suffix=".json", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(scratch, folder / name)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    return folder / name


def _stable_digest(data: bytes) -> str:
    """SHA-256 of the DiagnosticReport identifiers in the bundle (deterministic), else of the whole file."""
    document = json.loads(data)
    keys = [
        identifier.get("value", "")
        for entry in document.get("entry", [])
        if entry.get("resource", {}).get("resourceType") == "DiagnosticReport"
        for identifier in entry["resource"].get("identifier", [])
    ]
    basis = "\n".join(keys).encode() if keys else data
    return hashlib.sha256(basis).hexdigest()[:24]
