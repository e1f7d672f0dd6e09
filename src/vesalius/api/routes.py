"""REST routes: submit a job (upload or pull), read its state, list and download its results, health, metrics.

Uploaded files are stored under numbered names (`00000.dcm`, `00001.nii.gz`), never under the client's file names,
which often carry a patient's name. Results are served only when the job's output manifest lists them.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from vesalius.api.auth import require_api_key
from vesalius.gateway.jobs import JobOutput, JobRecord, JobSpec, JobState, ModelInfo, OutputKind, idempotency_key
from vesalius.gateway.queue import JobQueue

if TYPE_CHECKING:
    from vesalius.api.app import ApiSettings

router = APIRouter()

JobId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The id returned by POST /v1/jobs.")]
Requester = Annotated[str, Depends(require_api_key)]
MAX_JSON_BYTES = 64 * 1024
CHUNK = 1024 * 1024
MEDIA_TYPES: dict[str, str] = {
    "seg": "application/dicom",
    "sr": "application/dicom",
    "sc": "application/dicom",
    "fhir": "application/fhir+json",
    "csv": "text/csv",
    "nifti": "application/octet-stream",
    "report": "text/html",
}


class PullRequest(BaseModel):
    """Ask Vesalius to fetch a study from an archive (C-FIND, then C-GET) and run it."""

    study_instance_uid: str = Field(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)
    source: str = Field(pattern=r"^[^@\s\\]{1,16}@[A-Za-z0-9.-]+:[0-9]{1,5}$", description="AE@host:port")
    models: list[str] | None = Field(default=None, description="Model names; the server's defaults when omitted.")


class JobView(BaseModel):
    job_id: str
    kind: str
    state: JobState
    attempts: int
    max_attempts: int
    error: str | None
    study_instance_uid: str | None
    models: list[str]
    requester: str
    created: datetime
    started: datetime | None
    finished: datetime | None
    results_url: str

    @classmethod
    def of(cls, record: JobRecord) -> JobView:
        spec = record.spec
        return cls(
            job_id=spec.job_id,
            kind=spec.kind,
            state=record.state,
            attempts=record.attempts,
            max_attempts=record.max_attempts,
            error=record.last_error,
            study_instance_uid=spec.study_instance_uid,
            models=spec.models,
            requester=spec.requester,
            created=spec.created,
            started=record.started,
            finished=record.finished,
            results_url=f"/v1/jobs/{spec.job_id}/results",
        )


class ResultFile(BaseModel):
    name: str
    kind: OutputKind
    size_bytes: int
    sop_instance_uid: str | None
    url: str


class ResultsView(BaseModel):
    job_id: str
    files: list[ResultFile]
    output_uids: list[str]
    models: list[ModelInfo]
    summary: dict[str, Any]


class _UploadTooLargeError(Exception):
    pass


class _UnsupportedFileError(Exception):
    pass


def _settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def _queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


def _suffix(head: bytes, filename: str) -> str:
    """`.dcm` or `.nii[.gz]` from the file's first bytes (and its name for gzip), else _UnsupportedFileError."""
    name = filename.lower()
    if head[128:132] == b"DICM":
        return ".dcm"
    if head[:2] == b"\x1f\x8b" and name.endswith(".nii.gz"):
        return ".nii.gz"
    sizeof_hdr = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")} if len(head) >= 4 else set()
    if sizeof_hdr & {348, 540}:  # NIfTI-1 / NIfTI-2 header size, either byte order
        return ".nii"
    raise _UnsupportedFileError


def _store_uploads(files: Sequence[tuple[BinaryIO, str]], folder: Path, limit: int) -> list[str]:
    """Copy uploads into `folder` under numbered names; returns their SHA-256 digests."""
    folder.mkdir(parents=True)
    digests, total = [], 0
    for index, (source, filename) in enumerate(files):
        source.seek(0)
        head = source.read(132)
        try:
            suffix = _suffix(head, filename)
        except _UnsupportedFileError:
            raise _UnsupportedFileError(
                f"file #{index} is neither DICOM (with preamble) nor NIfTI (.nii, .nii.gz)"
            ) from None
        digest = hashlib.sha256()
        with (folder / f"{index:05d}{suffix}").open("wb") as target:
            chunk = head
            while chunk:
                total += len(chunk)
                if total > limit:
                    raise _UploadTooLargeError
                digest.update(chunk)
                target.write(chunk)
                chunk = source.read(CHUNK)
        digests.append(digest.hexdigest())
    return digests


def _models(settings: ApiSettings, requested: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    names = sorted({m.strip() for m in requested or [] if m.strip()}) or sorted(settings.default_models)
    if not names:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "no model named and the server has no default")
    unknown = [n for n in names if settings.model_hashes and n not in settings.model_hashes]
    if unknown:
        known = ", ".join(sorted(settings.model_hashes))
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"unknown model(s) {unknown}; known: {known}")
    return names, {n: settings.model_hashes.get(n, "") for n in names}


def _body_size(request: Request, limit: int) -> int:
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise HTTPException(status.HTTP_411_LENGTH_REQUIRED, "a Content-Length header is required")
    if int(length) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"request of {length} bytes exceeds {limit} bytes")
    return int(length)


async def _submit_upload(
    request: Request, settings: ApiSettings, queue: JobQueue, requester: str
) -> tuple[JobRecord, bool]:
    _body_size(request, settings.max_upload_bytes)
    job_id = uuid.uuid4().hex
    folder = settings.upload_root / job_id
    async with request.form(max_files=settings.max_upload_files, max_fields=100) as form:
        uploads = [(v.file, v.filename or "") for _, v in form.multi_items() if isinstance(v, UploadFile)]
        requested = [m for v in form.getlist("models") if isinstance(v, str) for m in v.split(",")]
        if not uploads:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the multipart body holds no file")
        models, hashes = _models(settings, requested)
        try:
            digests = await run_in_threadpool(_store_uploads, uploads, folder, settings.max_upload_bytes)
        except _UploadTooLargeError:
            shutil.rmtree(folder, ignore_errors=True)
            limit = settings.max_upload_bytes
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"uploads exceed {limit} bytes") from None
        except _UnsupportedFileError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(exc)) from None
    spec = JobSpec(job_id=job_id, kind="files", input_folder=folder, models=models, requester=requester)
    record, created = queue.submit(spec, idempotency_key(digests, hashes))
    if not created:
        shutil.rmtree(folder, ignore_errors=True)
    return record, created


def _submit_pull(request_body: bytes, settings: ApiSettings, queue: JobQueue, requester: str) -> tuple[JobRecord, bool]:
    try:
        pull = PullRequest.model_validate_json(request_body)
    except ValidationError as exc:
        errors = jsonable_encoder(exc.errors(include_url=False, include_context=False))
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, errors) from None
    models, hashes = _models(settings, pull.models)
    job_id = uuid.uuid4().hex
    spec = JobSpec(
        job_id=job_id,
        kind="pull",
        study_instance_uid=pull.study_instance_uid,
        source=pull.source,
        input_folder=settings.upload_root / job_id,
        models=models,
        requester=requester,
    )
    return queue.submit(spec, idempotency_key(pull.study_instance_uid, hashes))


@router.post(
    "/v1/jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    summary="Submit a job",
    description=(
        "Either `multipart/form-data` with DICOM or NIfTI files (any field name) and an optional `models` field "
        "(comma-separated), or `application/json` naming a study to pull: "
        '`{"study_instance_uid": "1.2.3", "source": "PACS@host:104", "models": ["lung-nodules"]}`. '
        "Equal work (same files or study, same models) returns the existing job with 200 instead of 202."
    ),
    responses={
        200: {"description": "The same work was already submitted; its job is returned."},
        401: {"description": "Missing or invalid API key."},
        411: {"description": "No Content-Length."},
        413: {"description": "The upload is larger than the server accepts."},
        415: {"description": "Neither multipart nor JSON, or a file that is neither DICOM nor NIfTI."},
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "models": {"type": "string", "description": "Comma-separated model names."},
                        },
                    }
                },
                "application/json": {"schema": PullRequest.model_json_schema()},
            },
            "required": True,
        }
    },
)
async def submit_job(request: Request, response: Response, requester: Requester) -> JobView:
    settings, queue = _settings(request), _queue(request)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        record, created = await _submit_upload(request, settings, queue, requester)
    elif content_type.startswith("application/json"):
        _body_size(request, MAX_JSON_BYTES)
        record, created = _submit_pull(await request.body(), settings, queue, requester)
    else:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data or application/json")
    if not created:
        response.status_code = status.HTTP_200_OK
    return JobView.of(record)


@router.get("/v1/jobs/{job_id}", response_model=JobView, summary="A job's state, attempts and times")
def get_job(job_id: JobId, request: Request, _: Requester) -> JobView:
    return JobView.of(_queue(request).get(job_id))


def _done(queue: JobQueue, job_id: str) -> tuple[JobOutput, Path]:
    """The output manifest and folder of a finished job, or 409."""
    record = queue.get(job_id)
    if record.state is not JobState.DONE or record.output is None or record.output_dir is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} has no results: it is {record.state.value}")
    return record.output, record.output_dir


@router.get(
    "/v1/jobs/{job_id}/results",
    response_model=ResultsView,
    summary="The files a finished job produced",
    responses={409: {"description": "The job is not done."}},
)
def list_results(job_id: JobId, request: Request, _: Requester) -> ResultsView:
    out, folder = _done(_queue(request), job_id)
    files = [
        ResultFile(
            name=f.name,
            kind=f.kind,
            size_bytes=(folder / f.name).stat().st_size,
            sop_instance_uid=f.sop_instance_uid,
            url=f"/v1/jobs/{job_id}/results/{f.name}",
        )
        for f in out.files
    ]
    return ResultsView(job_id=job_id, files=files, output_uids=out.output_uids, models=out.models, summary=out.summary)


@router.get(
    "/v1/jobs/{job_id}/results/{name:path}",
    summary="Download one result file",
    response_class=FileResponse,
    responses={404: {"description": "No such file among the job's results."}},
)
def download_result(job_id: JobId, name: str, request: Request, _: Requester) -> FileResponse:
    out, folder = _done(_queue(request), job_id)
    entry = {f.name: f for f in out.files}.get(name)  # only names in the manifest: "../" and "/x" never match
    root = folder.resolve()
    path = (root / name).resolve() if entry else None
    if entry is None or path is None or not path.is_relative_to(root) or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no result named {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES.get(entry.kind), filename=PurePosixPath(name).name)


@router.get("/v1/health", summary="Is the queue reachable and is there disk space? No API key needed.")
def health(request: Request, response: Response) -> dict[str, Any]:
    settings, queue = _settings(request), _queue(request)
    report: dict[str, Any] = {"status": "ok", "queue": "ok", "disk": {}}
    try:
        queue.ping()
    except Exception as exc:
        report["status"], report["queue"] = "unavailable", str(exc)
    folders = {"upload_root": settings.upload_root, "output_root": settings.output_root}
    for label, folder in folders.items():
        if folder is None:
            continue
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
        report["disk"][label] = {"free_bytes": free, "ok": free >= settings.min_free_bytes}
        if free < settings.min_free_bytes:
            report["status"] = "unavailable"
    if report["status"] != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return report


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
