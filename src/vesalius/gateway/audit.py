"""The audit log (one JSON line per finished job) and the helpers that keep PHI out of it and out of the logs.

The audit log answers "which model, which version, on which study, producing which objects, when, asked by whom"
by UID and key name only. Patient name, id and birth date never appear: the records are built from the job table,
which holds none, and error messages are scrubbed of the PHI values found in the job's own input headers.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydantic import BaseModel, Field
from pydicom.dataset import Dataset

from vesalius.gateway.jobs import JobKind, JobRecord, JobState, ModelInfo

PHI_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "InstitutionName",
        "InstitutionAddress",
    }
)
"""DICOM attributes whose values identify a patient (or lead to one) and must never reach a log."""

REDACTED = "<redacted>"
_SCAN_LIMIT = 64


class Scrubber:
    """Removes known PHI values from free text, such as an exception message that quotes a header value."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        words: set[str] = set()
        for value in values:
            value = value.strip()
            if len(value) < 2:
                continue
            words.add(value)
            parts = [p for p in re.split(r"[\^=\s]+", value) if len(p) >= 3]
            words.update(parts)
            if len(parts) > 1:
                words.add(" ".join(parts))
        longest_first = sorted(words, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, longest_first)), re.IGNORECASE) if words else None

    @classmethod
    def from_dicom_folder(cls, folder: Path, limit: int = _SCAN_LIMIT) -> Scrubber:
        """Collect PHI values from the headers of up to `limit` DICOM files in `folder` (others are skipped)."""
        values: set[str] = set()
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        for path in files[:limit]:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=sorted(PHI_KEYWORDS))
            except Exception:
                continue  # not DICOM (NIfTI, notes): nothing to collect
            values.update(_phi_values(ds))
        return cls(values)

    def __call__(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(REDACTED, text)


def _phi_values(ds: Dataset) -> set[str]:
    found: set[str] = set()
    for keyword in PHI_KEYWORDS:
        value = ds.get(keyword)
        if value is None:
            continue
        items = value if isinstance(value, pydicom.multival.MultiValue | list) else [value]
        found.update(str(v) for v in items if str(v))
    return found


def redact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `fields` safe to log: PHI keywords masked, datasets reduced to their UIDs."""
    safe: dict[str, Any] = {}
    for key, value in fields.items():
        if key in PHI_KEYWORDS:
            safe[key] = REDACTED
        elif isinstance(value, Dataset):
            uids = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality")
            safe[key] = {k: str(value.get(k)) for k in uids if k in value}
        elif isinstance(value, Mapping):
            safe[key] = redact(value)
        else:
            safe[key] = value
    return safe


def safe_log(
    logger: logging.Logger, level: int, message: str, *, scrubber: Scrubber | None = None, **fields: Any
) -> None:
    """Log `message` with `fields` as key=value pairs, PHI keywords masked and known PHI values scrubbed."""
    text = message
    if fields:
        text += " " + " ".join(f"{k}={v}" for k, v in redact(fields).items())
    logger.log(level, scrubber(text) if scrubber else text)


class AuditRecord(BaseModel):
    """One finished job, by UID and key name only."""

    job_id: str
    kind: JobKind
    requester: str
    outcome: Literal["done", "failed"]
    attempts: int
    error: str | None = None
    study_instance_uid: str | None = None
    series_instance_uids: list[str] = Field(default_factory=list)
    instance_count: int | None = None
    input_file_count: int = 0
    requested_models: list[str] = Field(default_factory=list)
    models: list[ModelInfo] = Field(default_factory=list)
    output_uids: list[str] = Field(default_factory=list)
    output_files: list[str] = Field(default_factory=list)
    received: datetime
    started: datetime | None = None
    finished: datetime | None = None

    @classmethod
    def from_job(cls, record: JobRecord) -> AuditRecord:
        if record.state not in (JobState.DONE, JobState.FAILED):
            raise ValueError(f"job {record.job_id}: only finished jobs are audited, state is {record.state}")
        spec, out = record.spec, record.output
        folder = spec.input_folder
        n_files = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
        return cls(
            job_id=spec.job_id,
            kind=spec.kind,
            requester=spec.requester,
            outcome="done" if record.state is JobState.DONE else "failed",
            attempts=record.attempts,
            error=record.last_error,
            study_instance_uid=spec.study_instance_uid,
            series_instance_uids=out.input_series_uids if out else [],
            instance_count=out.input_instance_count if out else None,
            input_file_count=n_files,
            requested_models=spec.models,
            models=out.models if out else [],
            output_uids=out.output_uids if out else [],
            output_files=[f.name for f in out.files] if out else [],
            received=spec.created,
            started=record.started,
            finished=record.finished,
        )


class AuditLog:
    """Append-only JSON Lines; each record is flushed and fsync-ed, and the file is locked while writing so
    several worker processes can share one log."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: JobRecord) -> AuditRecord:
        entry = AuditRecord.from_job(record)
        line = entry.model_dump_json() + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return entry

    def read(self) -> list[AuditRecord]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [AuditRecord.model_validate(json.loads(line)) for line in lines if line.strip()]
