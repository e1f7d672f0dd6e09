"""The job contract between whoever submits work (DICOM listener, REST API, pull) and the workers that run it.

A job names its inputs by UID and folder and its requester by API key name or AE title, never by patient, so a
job record can be stored, logged and audited without carrying PHI.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.uid import generate_uid

from vesalius.core.errors import InputError, VesaliusError

JobKind = Literal["dicom-study", "files", "pull"]
OutputKind = Literal["seg", "sr", "fhir", "csv", "sc", "nifti", "report"]


class JobNotFoundError(InputError):
    """No job has the given id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r}: no such job")


class QueueError(VesaliusError):
    """The job queue or its job table cannot do what was asked (backend unreachable, missing handler)."""


class JobAttemptError(VesaliusError):
    """One attempt of a job failed and the queue will retry it; the message is already stripped of PHI."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobSpec(BaseModel):
    """What to run: inputs, models and who asked. Immutable once submitted."""

    model_config = ConfigDict(frozen=True)

    job_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Opaque id, safe as a folder name.")
    kind: JobKind
    study_instance_uid: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)
    input_folder: Path
    models: list[str] = Field(default_factory=list)
    requester: str = Field(description="API key name or calling AE title; never a person's name.")
    source: str | None = Field(default=None, description="For pull jobs: the archive as AE@host:port.")
    created: datetime = Field(default_factory=utcnow)

    def output_uid(self, *parts: str) -> str:
        """A DICOM UID derived from the job's inputs and `parts`, so a re-run writes the same UIDs (exactly once).

        Derived from the study UID and model names rather than the job id: a resubmitted study yields the same UIDs.
        """
        basis = [self.study_instance_uid or self.job_id, *sorted(self.models), *parts]
        return str(generate_uid(entropy_srcs=basis))


class OutputFile(BaseModel):
    """One produced file, named relative to the job's output folder."""

    name: str
    kind: OutputKind
    sop_instance_uid: str | None = None

    @field_validator("name")
    @classmethod
    def _relative_inside(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
            raise ValueError(f"output file name must be relative to the job folder without '..', got {value!r}")
        return str(path)


class ModelInfo(BaseModel):
    """The exact model that produced a result: what the audit log must be able to name."""

    name: str
    version: str
    sha256: str


class JobOutput(BaseModel):
    """What a processor returns: files, the DICOM UIDs it wrote, the models used and a summary of findings."""

    files: list[OutputFile] = Field(default_factory=list)
    output_uids: list[str] = Field(default_factory=list)
    models: list[ModelInfo] = Field(default_factory=list)
    input_series_uids: list[str] = Field(default_factory=list)
    input_instance_count: int = 0
    summary: dict[str, Any] = Field(default_factory=dict)


Processor = Callable[[JobSpec, Path], JobOutput]
"""Runs one job: reads `spec.input_folder`, writes into the given (temporary) output folder, returns what it wrote."""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobRecord(BaseModel):
    """A job's state in the job table: the spec plus its life so far."""

    spec: JobSpec
    idempotency_key: str
    state: JobState = JobState.QUEUED
    attempts: int = 0
    max_attempts: int = 4
    last_error: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    updated: datetime = Field(default_factory=utcnow)
    lease_token: str | None = None
    lease_expires: datetime | None = None
    output: JobOutput | None = None
    output_dir: Path | None = None

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def duration_seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return (self.finished - self.started).total_seconds()


def idempotency_key(inputs: str | Sequence[str], models: Mapping[str, str]) -> str:
    """A key that is equal for equal work: the same inputs (a study UID or file digests) and the same model hashes.

    `models` maps model name to its weights' SHA-256 (empty string when unknown), so a new model version is new work.
    """
    basis = {"inputs": [inputs] if isinstance(inputs, str) else sorted(inputs), "models": sorted(models.items())}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()
